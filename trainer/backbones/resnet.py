"""A log-mel ResNet: the small convolutional backbone (and the natural shape for an edge student).

Time x mel is treated as a 2-D image; residual stages halve both axes after the first; the
remaining mel axis is folded into channels and projected to `dim`, giving [B, frames, dim].
Checkpoints are `{"cfg": {...}, "model": state_dict}` torch files, like BEATs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from trainer.backbones.base import Backbone, BackboneConfig, config_for_size, parse_config
from trainer.backbones.checkpoint import as_state_dict, load_strict, read_torch_file
from trainer.errors import CheckpointError
from trainer.frontend import LogMel


class ResNetConfig(BackboneConfig):
    """Front end and network sizes of the log-mel ResNet."""

    sample_rate_hz: int = Field(16000, gt=0)
    n_fft: int = Field(1024, gt=0, description="DFT size and window length in samples")
    hop: int = Field(160, gt=0, description="frame hop in samples (10 ms at 16 kHz)")
    n_mels: int = Field(64, gt=0)
    channels: tuple[int, ...] = Field((32, 64, 128, 256), min_length=1)
    blocks_per_stage: int = Field(2, ge=1)
    dim: int = Field(256, gt=0, description="output feature size")


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_fft": 256, "n_mels": 32, "channels": (8, 16), "blocks_per_stage": 1, "dim": 64},
    "base": {},
}


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetBackbone(Backbone):
    """Waveform -> log-mel -> residual CNN -> [B, frames / 2^(stages-1), dim]."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.sample_rate_hz = config.sample_rate_hz
        self.frontend = LogMel(config.sample_rate_hz, config.n_fft, config.hop, config.n_mels)
        self.input_norm = nn.BatchNorm1d(config.n_mels)
        first = config.channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(1, first, 3, 1, 1, bias=False), nn.BatchNorm2d(first), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        in_channels = first
        for stage, channels in enumerate(config.channels):
            for block in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(ResidualBlock(in_channels, channels, stride))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        mels_out = config.n_mels
        for _ in config.channels[1:]:
            mels_out = (mels_out + 1) // 2
        self.projection = nn.Linear(in_channels * mels_out, config.dim)

    def forward(self, wave: Tensor) -> Tensor:
        mel = self.input_norm(self.frontend(wave).transpose(1, 2))  # [B, mels, frames]
        x = self.blocks(self.stem(mel.transpose(1, 2).unsqueeze(1)))  # [B, C, frames', mels']
        batch, channels, frames, mels = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, channels * mels)
        return self.projection(x)


def save_resnet(model: ResNetBackbone, path: Path) -> None:
    """Write `{"cfg", "model"}` so `build(…, checkpoint=path)` rebuilds exactly this model."""
    torch.save({"cfg": model.config.model_dump(mode="json"), "model": model.state_dict()}, path)


def build(size: str | Mapping[str, Any], checkpoint: Path | None) -> ResNetBackbone:
    """A ResNet of `size`, or the one stored in `checkpoint` (whose cfg then decides the size)."""
    if checkpoint is None:
        return ResNetBackbone(config_for_size(ResNetConfig, PRESETS, size))
    content = read_torch_file(checkpoint)
    if not isinstance(content, Mapping) or set(content) != {"cfg", "model"}:
        found = sorted(map(str, content)) if isinstance(content, Mapping) else type(content)
        raise CheckpointError(
            f"{checkpoint}: a ResNet checkpoint is a dict with keys 'cfg' and 'model', found "
            f"{found}. Fix: pass a file written by save_resnet"
        )
    config = parse_config(ResNetConfig, content["cfg"], f"{checkpoint} cfg", CheckpointError)
    model = ResNetBackbone(config)
    load_strict(
        model,
        as_state_dict(content["model"], checkpoint, "'model'"),
        checkpoint,
        fix="pass a ResNet checkpoint written by save_resnet with a cfg matching its weights",
    )
    return model
