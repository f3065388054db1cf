"""The protocol every embedder follows, so scoring never cares where a vector came from."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Waveform in, L2-normalised vector out.

    `embed` takes mono float32 audio at `sample_rate_hz`, nominally `window_s` long (longer or
    shorter input is accepted and handled by the embedder), and returns shape (dim,) float32.
    """

    name: str
    sample_rate_hz: int
    window_s: float
    dim: int

    def embed(self, audio: np.ndarray) -> np.ndarray: ...


def l2_normalise(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale rows (or one vector) to unit length; zero vectors stay zero."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norms, eps)).astype(np.float32, copy=False)
