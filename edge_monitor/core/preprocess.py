"""Make every window comparable before embedding: DC removal, BS.1770 loudness, fault flags.

Loudness normalisation (ITU-R BS.1770 via pyloudnorm) takes the microphone gain out of the
embedding; a floor keeps near-silent input from being amplified into noise. Silence and
clipping are flagged, not hidden: the daemon turns them into a `fault` state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyloudnorm
from pydantic import BaseModel, ConfigDict, Field

# pyloudnorm gates in 400 ms blocks; shorter input is measured by RMS instead.
LOUDNESS_BLOCK_S = 0.4


@dataclass(frozen=True)
class PreprocessConfig:
    """How a window is conditioned; defaults suit 16-bit microphones on machines."""

    normalise_loudness: bool = True
    target_lufs: float = -23.0
    # Input quieter than this is not lifted further: its gain is capped at target - floor.
    loudness_floor_lufs: float = -60.0
    remove_dc: bool = True
    silence_dbfs: float = -70.0
    clip_level: float = 0.999
    clip_fraction: float = 0.001


class PreprocessSettings(BaseModel):
    """PreprocessConfig as read from a file, with bounds: the daemon's `preprocess` section
    and a bundle manifest's `preprocess` are both read through this one model."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    normalise_loudness: bool = Field(
        default=True, description="BS.1770 loudness normalisation of every window"
    )
    target_lufs: float = Field(default=-23.0, ge=-70.0, le=0.0, description="loudness target")
    loudness_floor_lufs: float = Field(
        default=-60.0, ge=-120.0, le=-10.0,
        description="windows quieter than this are not lifted further",
    )
    remove_dc: bool = Field(default=True, description="subtract each window's mean")
    silence_dbfs: float = Field(
        default=-70.0, ge=-140.0, le=-10.0, description="RMS below this counts as silence"
    )
    clip_level: float = Field(
        default=0.999, gt=0.5, le=1.0, description="|sample| at or above this counts as clipped"
    )
    clip_fraction: float = Field(
        default=0.001, gt=0.0, le=1.0,
        description="a window is clipped when this fraction of its samples is clipped",
    )

    def to_preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(**self.model_dump())


@dataclass(frozen=True)
class Preprocessed:
    """A conditioned window and what was measured on the way."""

    audio: np.ndarray
    loudness_lufs: float
    gain_db: float
    rms_dbfs: float
    silent: bool
    clipped: bool


@functools.lru_cache(maxsize=8)
def _meter(sample_rate_hz: int) -> pyloudnorm.Meter:
    return pyloudnorm.Meter(sample_rate_hz, block_size=LOUDNESS_BLOCK_S)


def _dbfs(value: float) -> float:
    return float(20.0 * np.log10(max(value, 1e-12)))


def loudness_lufs(audio: np.ndarray, sample_rate_hz: int) -> float:
    """Integrated BS.1770 loudness; RMS-based for input shorter than one gating block."""
    if audio.shape[0] < int(LOUDNESS_BLOCK_S * sample_rate_hz) + 1:
        return _dbfs(float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))) - 0.691
    value = float(_meter(sample_rate_hz).integrated_loudness(audio.astype(np.float64)))
    return value if np.isfinite(value) else -120.0


TRIM_FRAME_S = 0.1
TRIM_MIN_KEEP = 0.5
"""Trimming never keeps less than half of a clip: a mostly quiet clip is what it is."""


def trim_quiet_ends(audio: np.ndarray, sample_rate_hz: int, below_median_db: float) -> np.ndarray:
    """Drop a quiet lead-in and tail: 0.1 s frames more than `below_median_db` under the clip's
    median frame energy, at either end.

    A recording that starts before the machine runs, or ends after it stopped, is not the
    machine's sound; as a bank entry it becomes a normal clip unlike any other, and as a test
    clip it outscores faults (the low-FPR end of the ROC). Used on whole recordings (training,
    banks, DCASE evaluation), never on the daemon's fixed-length windows.
    """
    frame = max(1, round(TRIM_FRAME_S * sample_rate_hz))
    count = audio.shape[0] // frame
    if count < 3:
        return audio
    energy = np.square(audio[: count * frame].astype(np.float64)).reshape(count, frame).mean(1)
    level = 10.0 * np.log10(energy + 1e-20)
    loud = np.flatnonzero(level >= np.median(level) - below_median_db)
    first, last = int(loud[0]), int(loud[-1]) + 1
    if (last - first) < TRIM_MIN_KEEP * count:
        return audio
    end = audio.shape[0] if last == count else last * frame
    return audio[first * frame : end]


@dataclass(frozen=True)
class InputCheck:
    """Whether a window can be judged: the one check the daemon (per window, before scoring)
    and `edge-monitor score` (per file) share, so a clipped file is refused by both."""

    finite: bool
    clipped: bool
    clipped_fraction: float
    rms_dbfs: float
    silent: bool

    def problem(self, config: PreprocessConfig | PreprocessSettings) -> str | None:
        """Why the window says nothing about the machine, or None when it can be judged."""
        if not self.finite:
            return "the audio holds NaN or infinite samples (a broken input or file)"
        if self.clipped:
            return (f"clipping: {self.clipped_fraction:.1%} of the samples reach full scale "
                    f"(|x| >= {config.clip_level:g}); lower the input gain")
        if self.silent:
            return (f"silence: {self.rms_dbfs:.0f} dBFS is below {config.silence_dbfs:g} dBFS "
                    "(microphone dead, muted or unplugged?)")
        return None


def check_input(
    audio: np.ndarray, config: PreprocessConfig | PreprocessSettings
) -> InputCheck:
    """Measure a mono window against the config's clipping and silence levels."""
    x = np.asarray(audio)
    finite = bool(np.all(np.isfinite(x)))
    hits = int(np.count_nonzero(np.abs(x) >= config.clip_level)) if finite else 0
    fraction = hits / x.size if x.size else 0.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size and finite else 0.0
    rms_dbfs = _dbfs(rms)
    return InputCheck(finite, x.size > 0 and fraction >= config.clip_fraction, fraction,
                      rms_dbfs, rms_dbfs < config.silence_dbfs)


def preprocess(
    audio: np.ndarray, sample_rate_hz: int, config: PreprocessConfig | None = None
) -> Preprocessed:
    """Condition one mono window; the returned audio is float32 and never aliases the input."""
    cfg = config or PreprocessConfig()
    x = np.asarray(audio, dtype=np.float32)
    clipped = check_input(x, cfg).clipped
    x = x - np.float32(x.mean()) if cfg.remove_dc and x.size else x.copy()
    rms_dbfs = _dbfs(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0)
    silent = rms_dbfs < cfg.silence_dbfs
    lufs = loudness_lufs(x, sample_rate_hz) if x.size else -120.0
    gain_db = 0.0
    if cfg.normalise_loudness:
        gain_db = cfg.target_lufs - max(lufs, cfg.loudness_floor_lufs)
        x = x * np.float32(10.0 ** (gain_db / 20.0))
    return Preprocessed(
        audio=x.astype(np.float32, copy=False),
        loudness_lufs=lufs,
        gain_db=gain_db,
        rms_dbfs=rms_dbfs,
        silent=bool(silent),
        clipped=bool(clipped),
    )
