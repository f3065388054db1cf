"""`logmel-stats`: the weight-free default embedder (per-band mean and spread of a log-mel).

It needs no training and no model file, so a box with no bundle can still learn what its
machine sounds like. The mean spectrum is centred across bands so the vector describes the
spectral shape rather than the level; the per-band standard deviation captures how much each
band fluctuates (impacts, rubbing, modulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.melspec import log_mel

NAME = "logmel-stats"


@dataclass
class LogMelStatsEmbedder:
    """Log-mel statistics embedder; dim = 2 * n_mels."""

    sample_rate_hz: int = 16000
    window_s: float = 10.0
    n_fft: int = 1024
    hop: int = 512
    n_mels: int = 128
    name: str = NAME

    @property
    def dim(self) -> int:
        return 2 * self.n_mels

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Embed one mono window at `sample_rate_hz`."""
        spec = log_mel(audio, self.sample_rate_hz, self.n_fft, self.hop, self.n_mels)
        mean = spec.mean(axis=0)
        spread = spec.std(axis=0)
        return l2_normalise(np.concatenate([mean - mean.mean(), spread]))
