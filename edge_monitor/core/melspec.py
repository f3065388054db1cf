"""Log-mel spectrogram in numpy, for the weight-free default embedder on the edge."""

from __future__ import annotations

import functools

import numpy as np


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of hz_to_mel."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    sample_rate_hz: int, n_fft: int, n_mels: int, fmin_hz: float = 0.0, fmax_hz: float | None = None
) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), each with unit area (Slaney norm)."""
    fmax_hz = fmax_hz or sample_rate_hz / 2.0
    fft_hz = np.linspace(0.0, sample_rate_hz / 2.0, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin_hz), hz_to_mel(fmax_hz), n_mels + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (upper - lower))
    filters.setflags(write=False)
    return filters.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    window.setflags(write=False)
    return window


def log_mel(
    audio: np.ndarray,
    sample_rate_hz: int,
    n_fft: int = 1024,
    hop: int = 512,
    n_mels: int = 128,
    floor: float = 1e-10,
) -> np.ndarray:
    """Log (natural) mel power, shape (frames, n_mels); input shorter than n_fft is zero-padded."""
    x = np.asarray(audio, dtype=np.float32)
    if x.shape[0] < n_fft:
        x = np.pad(x, (0, n_fft - x.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * _hann(n_fft), axis=1)) ** 2
    mel = power @ mel_filterbank(sample_rate_hz, n_fft, n_mels).T
    return np.log(np.maximum(mel, floor)).astype(np.float32)
