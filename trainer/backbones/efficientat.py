"""EfficientAT (Schmid, Koutini, Widmer 2023): AudioSet MobileNetV3 CNNs on 32 kHz log-mel.

The module tree and parameter names follow the release's plain state dict (`features.<i>...`,
`classifier.{2,5}...`), so its `mn<XX>_as*.pt` files load strictly. The width multiplier is the
`XX / 10` of the release's names (mn04 = 0.4). The mel front end (trainer.frontend.EfficientATMel)
is part of the backbone, so it is inside every exported graph.

As a trainer backbone the last feature map [B, C, F, T] averaged over frequency gives frame
features [B, T, C]; `feature_maps` exposes the intermediate blocks for pooled embeddings of a
frozen model, and `logits` the AudioSet tagger (used to check a port against the release).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from trainer.backbones.base import Backbone, BackboneConfig, config_for_size
from trainer.backbones.checkpoint import as_state_dict, load_strict, read_torch_file
from trainer.frontend import EfficientATMel

SAMPLE_RATE_HZ = 32000
BN_EPS = 0.001
BN_MOMENTUM = 0.01
SE_REDUCTION = 4

# (input, kernel, expanded, output, squeeze-excitation, hard-swish, stride) per block of the
# MobileNetV3-Large layout at width 1.0, before the width multiplier; the last three blocks are
# halved by `reduced_tail`.
_BLOCKS: tuple[tuple[int, int, int, int, bool, bool, int], ...] = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)
_TAIL_BLOCKS = 3
_LAST_HIDDEN = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class EfficientATConfig(BackboneConfig):
    """The release's MobileNetV3 options (width, reduced tail, dilation) and its front end."""

    width_mult: float = Field(0.4, gt=0, description="channel multiplier: mn04 = 0.4, mn10 = 1.0")
    reduced_tail: bool = Field(False, description="halve the channels of the last three blocks")
    dilated: bool = Field(False, description="dilate the last stage instead of striding")
    num_classes: int = Field(527, gt=0, description="AudioSet classes of the tagging head")
    n_mels: int = Field(128, gt=0)
    n_fft: int = Field(1024, gt=0)
    win_length: int = Field(800, gt=0)
    hop: int = Field(320, gt=0, description="10 ms at 32 kHz")
    high_hz: float = Field(15000.0, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the tagging layer")


PRESETS: dict[str, dict[str, Any]] = {
    **{f"mn{int(w * 10):02d}": {"width_mult": w} for w in (0.1, 0.2, 0.4, 0.5, 1.0)},
    **{f"mn{int(w * 10)}": {"width_mult": w} for w in (2.0, 3.0, 4.0)},
    "tiny": {"width_mult": 0.1, "n_mels": 32, "num_classes": 8},
    "base": {"width_mult": 0.4},
}


def _conv_bn(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    act: type[nn.Module] | None = nn.Hardswish,
) -> nn.Sequential:
    """Conv2d (no bias), BatchNorm with MobileNetV3's eps/momentum, optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride,
            (kernel - 1) // 2 * dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class ChannelSqueezeExcitation(nn.Module):
    """Squeeze-excitation over channels: mean over (freq, time), two FCs, sigmoid gate."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeezed)
        self.fc2 = nn.Linear(squeezed, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class ConcurrentSE(nn.Module):
    """The release's container for squeeze-excitation (one layer over channels in mn models)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = make_divisible(channels // SE_REDUCTION, 8)
        self.conc_se_layers = nn.ModuleList([ChannelSqueezeExcitation(channels, squeezed)])

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise kxk, optional SE, project 1x1; residual when shapes allow."""

    def __init__(
        self,
        in_ch: int,
        kernel: int,
        expanded: int,
        out_ch: int,
        use_se: bool,
        hard_swish: bool,
        stride: int,
        dilation: int,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_ch == out_ch
        act = nn.Hardswish if hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_ch:
            layers.append(_conv_bn(in_ch, expanded, 1, act=act))
        layers.append(
            _conv_bn(
                expanded,
                expanded,
                kernel,
                stride=1 if dilation > 1 else stride,
                groups=expanded,
                dilation=dilation,
                act=act,
            )
        )
        if use_se:
            layers.append(ConcurrentSE(expanded))
        layers.append(_conv_bn(expanded, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


def block_channels(config: EfficientATConfig) -> list[tuple[int, int, int, int, bool, bool, int]]:
    """The 15 inverted-residual blocks of `config`, channels scaled and rounded as released.

    A reduced tail halves what the last stage produces: the output of its first block and the
    input, expansion and output of the two after it.
    """
    divider = 2 if config.reduced_tail else 1
    first_tail = len(_BLOCKS) - _TAIL_BLOCKS
    blocks = []
    for index, (cin, k, exp, cout, se, hs, stride) in enumerate(_BLOCKS):
        if index >= first_tail:
            cout //= divider
            if index > first_tail:
                cin, exp = cin // divider, exp // divider
        blocks.append((_scaled(cin, config), k, _scaled(exp, config), _scaled(cout, config),
                       se, hs, stride))
    return blocks


def _scaled(channels: int, config: EfficientATConfig) -> int:
    return make_divisible(channels * config.width_mult, 8)


class EfficientATBackbone(Backbone):
    """32 kHz wave -> EfficientAT mel -> MobileNetV3 -> frame features [B, T/32, C]."""

    def __init__(self, config: EfficientATConfig) -> None:
        super().__init__()
        self.config = config
        self.sample_rate_hz = SAMPLE_RATE_HZ
        self.frontend = EfficientATMel(
            SAMPLE_RATE_HZ, config.n_fft, config.win_length, config.hop, config.n_mels,
            high_hz=config.high_hz,
        )
        blocks = block_channels(config)
        first = blocks[0][0]
        layers: list[nn.Module] = [_conv_bn(1, first, 3, stride=2)]
        dilated_from = len(_BLOCKS) - _TAIL_BLOCKS if config.dilated else len(_BLOCKS)
        for index, (cin, k, exp, cout, se, hs, stride) in enumerate(blocks):
            dilation = 2 if index >= dilated_from else 1
            layers.append(InvertedResidual(cin, k, exp, cout, se, hs, stride, dilation))
        last_in = blocks[-1][3]
        self.dim = 6 * last_in
        # channels of each `features` output, for pooled embeddings of chosen layers
        self.layer_channels = [first] + [b[3] for b in blocks] + [self.dim]
        layers.append(_conv_bn(last_in, self.dim, 1))
        self.features = nn.Sequential(*layers)
        hidden = _scaled(_LAST_HIDDEN // (2 if config.reduced_tail else 1), config)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
            nn.Linear(self.dim, hidden),
            nn.Hardswish(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, config.num_classes),
        )

    def mel(self, wave: Tensor) -> Tensor:
        """The release's model input [B, 1, mels, frames] for a 32 kHz wave [B, T]."""
        return self.frontend(wave).transpose(1, 2).unsqueeze(1)

    def feature_maps(self, wave: Tensor, layers: Sequence[int]) -> list[Tensor]:
        """The outputs [B, C, F, T] of the given `features` indices (0..16; -1 = last)."""
        wanted = {i % len(self.features) for i in layers}
        maps: dict[int, Tensor] = {}
        x = self.mel(wave)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                maps[index] = x
            if len(maps) == len(wanted):
                break
        return [maps[i % len(self.features)] for i in layers]

    def forward(self, wave: Tensor) -> Tensor:
        return self.features(self.mel(wave)).mean(dim=2).transpose(1, 2)

    def embedding_and_logits(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """The release's outputs: pooled last feature map [B, C] and AudioSet logits [B, 527]."""
        last = self.features(self.mel(wave))
        return last.mean(dim=(2, 3)), self.classifier(last)


def build(size: str | Mapping[str, Any], checkpoint: Path | None) -> EfficientATBackbone:
    """An EfficientAT of `size` (mn01 ... mn40, or config values); weights from a release file.

    The release's files carry no config: `size` must name the architecture the file was
    trained with (mn04 for mn04_as_mAP_432.pt). A run directory stores its full config instead.
    """
    config = config_for_size(EfficientATConfig, PRESETS, size)
    model = EfficientATBackbone(config)
    if checkpoint is None:
        return model
    load_release(model, read_torch_file(checkpoint), checkpoint, size)
    return model


def load_release(
    model: EfficientATBackbone, content: object, checkpoint: Path, size: str | Mapping[str, Any]
) -> None:
    """Load a release state dict into `model` strictly, naming every bad key and the fix."""
    load_strict(
        model,
        as_state_dict(content, checkpoint, "the state dict"),
        checkpoint,
        fix=f"pass an EfficientAT release file (mn<XX>_as*.pt) whose width matches size "
        f"{size!r} (width_mult {model.config.width_mult}); mn04_as_mAP_432.pt needs size "
        "'mn04'",
    )
