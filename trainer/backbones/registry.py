"""Build a backbone by name: one entry point for every recipe, strategy and CLI."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_monitor.core.errors import ConfigError
from trainer.backbones import beats, eat, efficientat, hubert, resnet
from trainer.backbones.base import Backbone

BUILDERS: dict[str, Callable[[str | Mapping[str, Any], Path | None], Backbone]] = {
    "beats": beats.build,
    "eat": eat.build,
    "sslam": eat.build_sslam,
    "hubert": hubert.build,
    "resnet": resnet.build,
    "efficientat": efficientat.build,
}


def build_backbone(
    name: str, size: str | Mapping[str, Any] = "base", checkpoint: Path | None = None
) -> Backbone:
    """The backbone `name` at `size` (a preset, or values over "base"), or as in `checkpoint`.

    A checkpoint that stores its own config (BEATs cfg, config.json) decides the architecture;
    `size` then only matters for formats without one (a bare HuBERT state dict).
    Nothing is downloaded: `checkpoint` is a local file or directory.
    """
    if name not in BUILDERS:
        raise ConfigError(f"unknown backbone {name!r}; use one of {sorted(BUILDERS)}")
    try:
        return BUILDERS[name](size, None if checkpoint is None else Path(checkpoint))
    except ValueError as exc:  # a well-typed config whose values do not fit together
        raise ConfigError(f"backbone {name!r} with size {size!r}: {exc}") from exc
