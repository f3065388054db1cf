"""Audio files of any rate and channel count to mono float32 at the model's rate; the one
resampler.

Every rate conversion of the project goes through `StreamResampler` (soxr, high quality):
live audio chunk by chunk in the daemon, whole files here (`read_audio`, so the trainer's
banks and evaluation), enrolment windows. soxr's stream is exact whatever the chunking: a
recording streamed in chunks and flushed gives the samples a whole-file conversion gives,
so what is evaluated on the workstation is what the edge box hears.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edge_monitor.core.errors import AudioFileError, one_line

SUPPORTED_SUFFIXES = (".wav", ".flac")

# The audio rates the runtime accepts, for files, devices and models alike. Below 16 kHz the
# band every model of the project is trained on (DCASE's 16 kHz, EfficientAT's 32 kHz) is
# partly empty, so an upsampled 8 kHz (or 1 Hz) input looks anomalous at every window;
# 384 kHz is the highest rate audio interfaces deliver.
MIN_AUDIO_RATE_HZ = 16_000
MAX_AUDIO_RATE_HZ = 384_000


def check_audio_rate(rate_hz: object, where: str) -> int:
    """`rate_hz` as an int when it is a whole number of Hz within the accepted bounds, else
    AudioFileError naming `where` (a file, a device) and the bounds."""
    if isinstance(rate_hz, bool) or not isinstance(rate_hz, (int, np.integer)) or not (
        MIN_AUDIO_RATE_HZ <= rate_hz <= MAX_AUDIO_RATE_HZ
    ):
        raise AudioFileError(
            f"{where}: sample rate {rate_hz!r} Hz is outside {MIN_AUDIO_RATE_HZ}..."
            f"{MAX_AUDIO_RATE_HZ} Hz, so it cannot carry the models' band; record at 16 kHz "
            "or more"
        )
    return int(rate_hz)


class StreamResampler:
    """Converts a stream of chunks (frames, or frames x channels) from one rate to another.

    A stream holds back a few milliseconds of filter delay until `push(..., last=True)`
    flushes it; equal rates pass samples through unchanged.
    """

    def __init__(self, rate_in_hz: int, rate_out_hz: int, channels: int = 1) -> None:
        self.rate_in_hz = int(rate_in_hz)
        self.rate_out_hz = int(rate_out_hz)
        self._stream = (
            None if self.rate_in_hz == self.rate_out_hz
            else soxr.ResampleStream(self.rate_in_hz, self.rate_out_hz, channels,
                                     dtype="float32")
        )

    def push(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(audio, dtype=np.float32)
        if self._stream is None:
            return x
        return np.asarray(self._stream.resample_chunk(x, last=last), dtype=np.float32)


def resample(audio: np.ndarray, rate_in_hz: int, rate_out_hz: int) -> np.ndarray:
    """A whole signal (frames, or frames x channels) at another rate: one flushed stream."""
    channels = 1 if np.ndim(audio) == 1 else int(np.shape(audio)[1])
    return StreamResampler(rate_in_hz, rate_out_hz, channels).push(audio, last=True)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average channels; a (frames, channels) array becomes (frames,)."""
    if audio.ndim == 1:
        return audio
    return audio.mean(axis=1)


def read_audio(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """Decode a WAV/FLAC file to mono float32 at `sample_rate_hz`.

    A missing, undecodable, truncated or empty file raises AudioFileError naming the file.
    """
    audio, rate = decode_audio(path)
    return resample(audio, rate, int(sample_rate_hz))


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a WAV/FLAC file to mono float32 at its own rate; returns (audio, rate).

    A missing, undecodable, truncated or empty file raises AudioFileError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such audio file; check the path")
    try:
        info = sf.info(str(path))
        check_audio_rate(info.samplerate, str(path))
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioFileError(
            f"{path}: cannot decode audio ({one_line(exc)}); the file must be a complete WAV or "
            "FLAC"
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
    return to_mono(audio), int(rate)
