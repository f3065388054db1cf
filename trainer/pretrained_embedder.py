"""A pretrained checkpoint used as it is: frozen EfficientAT, pooled feature maps -> embedding.

This is the model for a new machine: no training, one model for a fleet, each box learning its
own bank on site. Which layers and which statistics make the embedding is a setting:

    POOLING = "16:mean+max,12:mean"

means the mean and the max over (frequency, time) of the last feature map (features[16]),
joined with the mean of the block four layers before it. Every part is L2-normalised before
they are joined, so each layer counts alike whatever its channel count or scale.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from edge_monitor.core.errors import ConfigError
from trainer.backbones.checkpoint import read_torch_file
from trainer.backbones.efficientat import (
    PRESETS,
    EfficientATBackbone,
    EfficientATConfig,
    build,
    load_release,
)
from trainer.errors import CheckpointError
from trainer.export import TorchEmbedder, unit

DEFAULT_POOLING = "16:mean+max,12:mean"
WINDOW_S = 10.0
STATS = ("mean", "max")
_PART = re.compile(r"^(-?\d+):([a-z+]+)$")
_WIDTH_KEY = "features.16.0.weight"


@dataclass(frozen=True)
class PoolingPart:
    """One feature map (an index into `features`) and the statistics taken over it."""

    layer: int
    stats: tuple[str, ...]


def parse_pooling(text: str) -> tuple[PoolingPart, ...]:
    """Parse "LAYER:STAT[+STAT],..." (STAT: mean or max), naming the bad part and the fix."""
    parts = []
    for raw in (p.strip() for p in text.split(",")):
        match = _PART.match(raw)
        stats = tuple(match[2].split("+")) if match else ()
        if not match or not stats or any(s not in STATS for s in stats):
            raise ConfigError(
                f"pooling {text!r}: part {raw!r} is not LAYER:STAT[+STAT] with STAT in "
                f"{STATS}; write e.g. {DEFAULT_POOLING!r}"
            )
        layer = int(match[1])
        if not -17 <= layer <= 16:
            raise ConfigError(f"pooling {text!r}: layer {layer} is outside 0..16 (or -1 = last)")
        parts.append(PoolingPart(layer, stats))
    return tuple(parts)


class PooledFeatureMaps(nn.Module):
    """Wave [B, T] -> unit embedding from pooled statistics of chosen feature maps."""

    def __init__(self, backbone: EfficientATBackbone, pooling: Sequence[PoolingPart]) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.pooling = tuple(pooling)
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)

    def forward(self, wave: Tensor) -> Tensor:
        maps = self.backbone.feature_maps(wave, [p.layer for p in self.pooling])
        pieces = []
        for part, fmap in zip(self.pooling, maps, strict=True):
            for stat in part.stats:
                pooled = fmap.mean(dim=(2, 3)) if stat == "mean" else fmap.amax(dim=(2, 3))
                pieces.append(unit(pooled))
        return unit(torch.cat(pieces, dim=1))

    def dim(self) -> int:
        """Size of the joined embedding."""
        return sum(self.backbone.layer_channels[p.layer] * len(p.stats) for p in self.pooling)


def release_size(state: Mapping[str, object], path: Path) -> str:
    """The preset (mn01 ... mn40) whose last convolution has the file's shape."""
    weight = state.get(_WIDTH_KEY)
    shape = tuple(getattr(weight, "shape", ()))
    for name in PRESETS:
        if name in ("tiny", "base"):
            continue
        model = EfficientATBackbone(EfficientATConfig(**PRESETS[name]))
        if tuple(model.features[16][0].weight.shape) == shape:
            return name
    raise CheckpointError(
        f"{path}: not an EfficientAT release state dict ({_WIDTH_KEY} has shape {shape}, which "
        f"no width in {sorted(n for n in PRESETS if n.startswith('mn'))} gives). Fix: pass a "
        "release file such as mn04_as_mAP_432.pt, or a run directory of edge-trainer finetune"
    )


def is_release_file(path: Path) -> bool:
    """True for a torch file holding a plain EfficientAT release state dict (not a run)."""
    if not (path.is_file() and path.suffix in (".pt", ".pth")):
        return False
    content = read_torch_file(path)
    return isinstance(content, Mapping) and _WIDTH_KEY in content


def load_pretrained_embedder(
    path: str | Path, pooling: str = DEFAULT_POOLING, name: str | None = None
) -> TorchEmbedder:
    """The frozen release checkpoint at `path` as an embedder (size read from the weights)."""
    path = Path(path)
    state = read_torch_file(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    size = release_size(state, path)
    backbone = build(size, None)
    load_release(backbone, state, path, size)
    module = PooledFeatureMaps(backbone, parse_pooling(pooling))
    embedder = TorchEmbedder(module, name or f"efficientat-{size}", module.backbone.sample_rate_hz,
                             WINDOW_S, module.dim())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    embedder.identity = f"{digest}|{pooling}"  # type: ignore[attr-defined]
    return embedder
