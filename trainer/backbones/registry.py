"""Build a backbone by name: one entry point for every recipe, strategy and CLI."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_monitor.core.errors import ConfigError
from trainer.backbones import beats, eat, efficientat, hubert, resnet
from trainer.backbones.base import Backbone, parse_config
from trainer.backbones.full_spectrum import FullSpectrumConfig, FullSpectrumFusion

FULL_SPECTRUM_KEY = "full_spectrum"

BUILDERS: dict[str, Callable[[str | Mapping[str, Any], Path | None], Backbone]] = {
    "beats": beats.build,
    "eat": eat.build,
    "sslam": eat.build_sslam,
    "hubert": hubert.build,
    "resnet": resnet.build,
    "efficientat": efficientat.build,
}


def build_backbone(
    name: str,
    size: str | Mapping[str, Any] = "base",
    checkpoint: Path | None = None,
    full_spectrum: Mapping[str, Any] | None = None,
) -> Backbone:
    """The backbone `name` at `size` (a preset, or values over "base"), or as in `checkpoint`,
    with a full-spectrum branch beside it when `full_spectrum` (or a `full_spectrum` key of a
    size mapping, as a run directory stores it) gives the branch's config.

    A checkpoint that stores its own config (BEATs cfg, config.json) decides the architecture;
    `size` then only matters for formats without one (a bare HuBERT state dict).
    Nothing is downloaded: `checkpoint` is a local file or directory.
    """
    if name not in BUILDERS:
        raise ConfigError(f"unknown backbone {name!r}; use one of {sorted(BUILDERS)}")
    if isinstance(size, Mapping) and FULL_SPECTRUM_KEY in size:
        size = dict(size)
        stored = size.pop(FULL_SPECTRUM_KEY)
        if full_spectrum is not None and dict(full_spectrum) != stored:
            raise ConfigError(
                f"backbone {name!r}: full_spectrum is given both in backbone.full_spectrum and "
                "in the size mapping, with different values; keep it in backbone.full_spectrum"
            )
        full_spectrum = stored
    try:
        backbone = BUILDERS[name](size, None if checkpoint is None else Path(checkpoint))
    except ValueError as exc:  # a well-typed config whose values do not fit together
        raise ConfigError(f"backbone {name!r} with size {size!r}: {exc}") from exc
    if full_spectrum is None:
        return backbone
    config = parse_config(
        FullSpectrumConfig, full_spectrum, f"backbone {name!r} full_spectrum", ConfigError
    )
    return FullSpectrumFusion(backbone, config)
