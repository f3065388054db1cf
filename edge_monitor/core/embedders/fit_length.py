"""Fit a clip to a model with a fixed input length: pad short clips, cover long ones.

Exported models with a static input (TFLite always, ONNX when exported so) see exactly
`samples` samples. A shorter clip is repeated to length (zeros would change the spectrum's
statistics); a longer one is covered by evenly spaced windows whose embeddings are averaged.
"""

from __future__ import annotations

import numpy as np


def fixed_length_windows(audio: np.ndarray, samples: int) -> np.ndarray:
    """Windows of exactly `samples` covering `audio`, shape (n, samples), float32."""
    x = np.asarray(audio, dtype=np.float32)
    if x.shape[0] == 0:
        raise ValueError("cannot embed an empty window; pass at least one sample")
    if x.shape[0] <= samples:
        return np.pad(x, (0, samples - x.shape[0]), mode="wrap")[None, :]
    count = int(np.ceil(x.shape[0] / samples))
    starts = np.linspace(0, x.shape[0] - samples, count).round().astype(np.int64)
    return np.stack([x[s : s + samples] for s in starts])
