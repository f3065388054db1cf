"""Embed with an exported waveform-in ONNX model through onnxruntime.

The model takes raw audio [1, samples] (front end inside the graph) and returns [1, dim].
Execution providers come from config (cpu, cuda, tensorrt); any that this onnxruntime build
lacks is dropped with a warning and the CPU provider is always kept as the last resort.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge_monitor.core.bank import sha256_file
from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.embedders.fit_length import fixed_length_windows
from edge_monitor.core.errors import BundleError, ConfigError, RuntimeUnavailableError, one_line

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
CPU_PROVIDER = PROVIDER_NAMES["cpu"]


def import_onnxruntime() -> ModuleType:
    """onnxruntime, imported only when a model needs it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "onnxruntime is not installed; install it with `pip install onnxruntime` "
            "(or `pip install onnxruntime-gpu` for the cuda and tensorrt providers)"
        ) from exc


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Map config names to onnxruntime providers, keep the available ones, end with CPU."""
    chosen = []
    for name in requested:
        provider = PROVIDER_NAMES.get(name.lower())
        if provider is None:
            raise ConfigError(
                f"execution provider {name!r} is unknown; use one of {sorted(PROVIDER_NAMES)}"
            )
        if provider not in available:
            log.warning(
                "execution provider %s is not available in this onnxruntime build (has %s); "
                "falling back to the next one",
                name,
                ", ".join(available),
            )
            continue
        if provider not in chosen:
            chosen.append(provider)
    if CPU_PROVIDER not in chosen:
        chosen.append(CPU_PROVIDER)
    return chosen


class OnnxEmbedder:
    """An Embedder backed by an onnxruntime session over a waveform-in model file."""

    def __init__(
        self,
        path: str | Path,
        name: str,
        sample_rate_hz: int,
        window_s: float,
        dim: int,
        providers: Sequence[str] = ("cpu",),
        threads: int | None = None,
    ) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        self.name = name
        self.sample_rate_hz = int(sample_rate_hz)
        self.window_s = float(window_s)
        self.dim = int(dim)
        self.identity = sha256_file(self.path) if self.path.is_file() else ""
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"inference threads = {threads!r}: must be an integer >= 1")
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        chosen = resolve_providers(providers, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen)
        except Exception as exc:  # onnxruntime's own exception types are not importable
            raise BundleError(
                f"{self.path}: onnxruntime cannot load the model ({one_line(exc)}); re-export it"
            ) from exc
        self.providers = self.session.get_providers()
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise BundleError(
                f"{self.path}: expected one waveform input of shape [1, samples], found "
                f"{[(i.name, i.shape) for i in inputs]}; export a waveform-in model"
            )
        self._input = inputs[0].name
        length = inputs[0].shape[1]
        self.input_samples = int(length) if isinstance(length, int) else None
        out_dim = outputs[0].shape[-1]
        if isinstance(out_dim, int) and out_dim != self.dim:
            raise BundleError(
                f"{self.path}: the model outputs {out_dim}-dimensional embeddings, the manifest "
                f"says {self.dim}; rebuild the bundle with this model"
            )

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate_hz)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out: Any = self.session.run(None, {self._input: batch})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Embed one mono window; see edge_monitor.core.embedders.fit_length for other lengths."""
        x = np.asarray(audio, dtype=np.float32)
        if self.input_samples is None:
            windows = [x] if x.shape[0] >= self.window_samples else list(
                fixed_length_windows(x, self.window_samples)
            )
        else:
            windows = list(fixed_length_windows(x, self.input_samples))
        vectors = np.stack([self._run(w[None, :]) for w in windows])
        if vectors.shape[1] != self.dim:
            raise BundleError(
                f"{self.path}: the model produced {vectors.shape[1]}-dimensional embeddings, "
                f"the manifest says {self.dim}; rebuild the bundle with this model"
            )
        if not np.isfinite(vectors).all():
            raise BundleError(
                f"{self.path}: the model produced NaN or infinite values for this window: it "
                "is broken on such input; fix and re-export it"
            )
        return l2_normalise(vectors.mean(axis=0))
