"""Read audio files of any rate and channel count into mono float32 at the model's rate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from edge_monitor.core.errors import AudioFileError

SUPPORTED_SUFFIXES = (".wav", ".flac")


def resample(audio: np.ndarray, rate_in_hz: int, rate_out_hz: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR) between integer rates; exact ratio via gcd."""
    if rate_in_hz == rate_out_hz:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(int(rate_in_hz), int(rate_out_hz))
    up, down = rate_out_hz // g, rate_in_hz // g
    out = resample_poly(audio, up, down, axis=0, window=("kaiser", 8.0))
    return out.astype(np.float32, copy=False)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average channels; a (frames, channels) array becomes (frames,)."""
    if audio.ndim == 1:
        return audio
    return audio.mean(axis=1)


def read_audio(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """Decode a WAV/FLAC file to mono float32 at `sample_rate_hz`.

    A missing, undecodable, truncated or empty file raises AudioFileError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such audio file; check the path")
    try:
        info = sf.info(str(path))
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioFileError(
            f"{path}: cannot decode audio ({exc}); the file must be a complete WAV or FLAC"
        ) from exc
    if audio.shape[0] == 0:
        raise AudioFileError(f"{path}: the file holds no audio frames; record it again")
    if info.frames > 0 and audio.shape[0] < info.frames:
        raise AudioFileError(
            f"{path}: truncated: header promises {info.frames} frames, only {audio.shape[0]} "
            "could be decoded; copy the file again"
        )
    if not np.all(np.isfinite(audio)):
        raise AudioFileError(f"{path}: the file holds NaN or infinite samples")
    return resample(to_mono(audio), int(rate), int(sample_rate_hz))
