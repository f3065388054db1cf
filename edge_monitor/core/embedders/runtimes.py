"""The one place a model's runtime name becomes its embedder: bundle loading, the trainer's
bundle builder and its export checks all build embedders here.

To add a runtime: write its Embedder in this package and add one loader to FILE_RUNTIMES.
Runtimes are imported lazily, so a box without TFLite never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.embedders.logmel_stats import NAME as LOGMEL_STATS
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.errors import ConfigError

BUILTIN = "builtin"
BUILTIN_EMBEDDERS: dict[str, Callable[..., Embedder]] = {LOGMEL_STATS: LogMelStatsEmbedder}


def _onnx(path: Path, name: str, sample_rate_hz: int, window_s: float, dim: int,
          providers: Sequence[str], threads: int | None) -> Embedder:
    from edge_monitor.core.embedders.onnx_model import OnnxEmbedder

    return OnnxEmbedder(path, name, sample_rate_hz, window_s, dim, providers, threads)


def _tflite(path: Path, name: str, sample_rate_hz: int, window_s: float, dim: int,
            providers: Sequence[str], threads: int | None) -> Embedder:
    from edge_monitor.core.embedders.tflite_model import TfliteEmbedder

    return TfliteEmbedder(path, name, sample_rate_hz, window_s, dim, threads)


FILE_RUNTIMES: dict[str, Callable[..., Embedder]] = {"onnx": _onnx, "tflite": _tflite}
RUNTIMES = (*FILE_RUNTIMES, BUILTIN)


def load_embedder(
    runtime: str, name: str, sample_rate_hz: int, window_s: float, dim: int, *,
    path: str | Path | None = None, builtin: str | None = None,
    params: Mapping[str, Any] | None = None, providers: Sequence[str] = ("cpu",),
    threads: int | None = None,
) -> Embedder:
    """The embedder of one model: a file for a file runtime, or a builtin by name."""
    if runtime == BUILTIN:
        if builtin not in BUILTIN_EMBEDDERS:
            raise ConfigError(f"model {name!r}: builtin {builtin!r} is unknown; use one of "
                              f"{sorted(BUILTIN_EMBEDDERS)}")
        embedder = BUILTIN_EMBEDDERS[builtin](sample_rate_hz=sample_rate_hz, window_s=window_s,
                                              **(params or {}))
        embedder.name = name
        return embedder
    if runtime not in FILE_RUNTIMES:
        raise ConfigError(f"model {name!r}: runtime {runtime!r} is unknown; use one of "
                          f"{list(RUNTIMES)}")
    if path is None or not Path(path).is_file():
        raise ConfigError(f"model {name!r}: file {path} not found")
    return FILE_RUNTIMES[runtime](Path(path), name, sample_rate_hz, window_s, dim, providers,
                                  threads)
