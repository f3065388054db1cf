"""Embed with an exported waveform-in TFLite model (ai-edge-litert, or tflite-runtime).

TFLite models have a static input [1, samples]; clips of other lengths are fitted by
edge_monitor.core.embedders.fit_length (repeat short clips, average windows over long ones).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.core.bank import sha256_file
from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.embedders.fit_length import fixed_length_windows
from edge_monitor.core.errors import BundleError, ConfigError, RuntimeUnavailableError, one_line

log = logging.getLogger(__name__)

INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def interpreter_class() -> Any:
    """The first TFLite Interpreter class installed, imported only when a model needs it."""
    for module_name in INTERPRETER_MODULES:
        try:
            return importlib.import_module(module_name).Interpreter
        except ImportError:
            log.debug("%s is not installed", module_name)
    raise RuntimeUnavailableError(
        "no TFLite runtime is installed; install it with `pip install ai-edge-litert` "
        "(or `pip install tflite-runtime` on boards that have wheels for it)"
    )


class TfliteEmbedder:
    """An Embedder backed by a TFLite interpreter over a waveform-in model file."""

    def __init__(
        self,
        path: str | Path,
        name: str,
        sample_rate_hz: int,
        window_s: float,
        dim: int,
        threads: int | None = None,
    ) -> None:
        interpreter = interpreter_class()
        self.path = Path(path)
        self.name = name
        self.sample_rate_hz = int(sample_rate_hz)
        self.window_s = float(window_s)
        self.dim = int(dim)
        self.identity = sha256_file(self.path) if self.path.is_file() else ""
        if threads is not None and threads < 1:
            raise ConfigError(f"inference threads = {threads!r}: must be an integer >= 1")
        try:
            self.interpreter = interpreter(model_path=str(self.path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(
                f"{self.path}: the TFLite runtime cannot load the model ({one_line(exc)}); "
                "re-export it"
            ) from exc
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 2 or inputs[0]["shape"][0] != 1:
            raise BundleError(
                f"{self.path}: expected one waveform input of shape [1, samples], found "
                f"{[tuple(i['shape']) for i in inputs]}; export a waveform-in model"
            )
        self._input = inputs[0]["index"]
        self._output = outputs[0]["index"]
        self.input_samples = int(inputs[0]["shape"][1])
        out_dim = int(outputs[0]["shape"][-1])
        if out_dim != self.dim:
            raise BundleError(
                f"{self.path}: the model outputs {out_dim}-dimensional embeddings, the manifest "
                f"says {self.dim}; rebuild the bundle with this model"
            )

    def _run(self, window: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._input, window[None, :])
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self._output), np.float32).reshape(-1)

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Embed one mono window; other lengths are fitted to the model's input."""
        windows = fixed_length_windows(np.asarray(audio, np.float32), self.input_samples)
        return l2_normalise(np.stack([self._run(w) for w in windows]).mean(axis=0))
