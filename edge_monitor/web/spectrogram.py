"""Spectrogram images of alarm clips, rendered on the box as PNG (numpy and zlib only).

The clip's log-mel spectrogram (`edge_monitor.core.melspec`, the front end the built-in
model hears) is scaled to an 80 dB range below its peak and coloured with a small
perceptual ramp; no plotting library is needed on the edge.
"""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_monitor.core.melspec import log_mel

MAX_WIDTH_PX = 800
MIN_WIDTH_PX = 400  # a short clip's columns are widened to at least this
N_MELS = 128
ROW_REPEAT = 2  # each mel band two pixels high
N_FFT = 1024
DYNAMIC_RANGE_DB = 80.0
# A viridis-like ramp: dark blue (quiet) to yellow (loud).
RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
                dtype=np.float64)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB image of shape (height, width, 3) as PNG bytes."""
    height, width, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, width * 3)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to RGB through RAMP."""
    stops = np.linspace(0.0, 1.0, len(RAMP))
    channels = [np.interp(values, stops, RAMP[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def spectrogram_rgb(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """(height, width, 3) image: time left to right, low frequencies at the bottom."""
    hop = max(N_FFT // 4, int(np.ceil(max(1, audio.shape[0] - N_FFT) / MAX_WIDTH_PX)))
    mel_db = log_mel(audio, sample_rate_hz, n_fft=N_FFT, hop=hop, n_mels=N_MELS) * (
        10.0 / np.log(10.0))
    top = float(mel_db.max())
    scaled = np.clip((mel_db - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
    image = np.repeat(scaled.T[::-1], ROW_REPEAT, axis=0)
    widen = max(1, -(-MIN_WIDTH_PX // image.shape[1]))
    return colour(np.repeat(image, widen, axis=1))


@functools.lru_cache(maxsize=32)
def _render(path: str, modified_ns: int) -> bytes:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return encode_png(spectrogram_rgb(audio.mean(axis=1), int(rate)))


def spectrogram_png(path: Path) -> bytes:
    """The clip's spectrogram as PNG; cached while the file is unchanged."""
    return _render(str(path), path.stat().st_mtime_ns)
