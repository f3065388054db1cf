"""The quality gate of an enrolment: refuse recordings that would teach the detector garbage.

A bank learns whatever it is given as "normal". A recording of a stopped machine (silence),
one with the input gain too high (clipping), a stuck or unplugged input (a constant signal)
or a test tone (a pure sine, nothing like machine noise) would make every later anomaly look
normal, so such windows are dropped, and a recording with too many of them, too short, or
with too few usable windows is rejected as a whole, with the reason and what to do.

Silence and clipping come from `edge_monitor.core.preprocess` (the flags every window gets);
"stuck" and "tonal" are measured here on the raw window.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edge_monitor.config.sections import QualityGateConfig
from edge_monitor.core.errors import BadInputError
from edge_monitor.core.preprocess import Preprocessed

SILENT, CLIPPED, STUCK, TONAL = "silent", "clipped", "stuck", "tonal"
# A stuck input repeats the same sample value; real microphones never do for long.
STUCK_REPEAT_FRACTION = 0.5
# Median spectral flatness of machine noise is ~1e-2 (ToyCar 0.011..0.05, synthetic 0.06);
# a pure tone with a little noise is below 1e-4.
TONAL_FLATNESS = 1e-4
FLATNESS_FFT = 1024
# Of an upsampled window's band, the part below the capture's Nyquist that the resampler's
# anti-imaging filter leaves untouched.
PASSBAND = 0.95


class QualityRejectedError(BadInputError):
    """A recording failed the enrolment quality gate; `reason` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class QualityReport:
    """What the gate saw: windows offered, dropped per reason, usable seconds."""

    windows: int = 0
    accepted: int = 0
    seconds: float = 0.0
    accepted_seconds: float = 0.0
    dropped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, object]:
        return {
            "windows": self.windows,
            "accepted": self.accepted,
            "seconds": round(self.seconds, 3),
            "accepted_seconds": round(self.accepted_seconds, 3),
            "dropped": dict(self.dropped),
        }


def spectral_flatness(audio: np.ndarray, band: float = 1.0) -> float:
    """Median over frames of geometric / arithmetic mean power: ~0 for a tone, 1 for white noise.

    Only the lowest `band` fraction of the spectrum is measured (the part the audio can hold).
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.size < FLATNESS_FFT:
        return 1.0
    x = x - x.mean()
    frames = np.lib.stride_tricks.sliding_window_view(x, FLATNESS_FFT)[:: FLATNESS_FFT // 2]
    power = np.abs(np.fft.rfft(frames * np.hanning(FLATNESS_FFT), axis=1)) ** 2 + 1e-20
    power = power[:, : max(2, int(power.shape[1] * band))]
    flatness = np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)
    return float(np.median(flatness))


def window_problem(raw: np.ndarray, conditioned: Preprocessed) -> str | None:
    """Why one window must not be enrolled, or None when it is usable.

    `raw` is the window as captured (a stuck input repeats exact sample values, which
    resampling would blur); `conditioned` is the same window at the model's rate, as the
    model sees it (a microphone rate above the model's would make any sound look tonal).
    A microphone rate below the model's (16 kHz capture, a 32 kHz model) leaves the top of
    the conditioned spectrum empty, so flatness is measured below the capture's Nyquist.
    """
    if conditioned.silent:
        return SILENT
    if conditioned.clipped:
        return CLIPPED
    x = np.asarray(raw)
    if x.size > 1 and np.count_nonzero(x[1:] == x[:-1]) >= STUCK_REPEAT_FRACTION * (x.size - 1):
        return STUCK
    ratio = x.size / max(conditioned.audio.size, 1)  # capture rate / model rate
    band = 1.0 if ratio >= 1.0 else ratio * PASSBAND
    if spectral_flatness(conditioned.audio, band) < TONAL_FLATNESS:
        return TONAL
    return None


class QualityGate:
    """Counts windows as they come (`observe`) and judges the whole recording (`verdict`)."""

    def __init__(self, config: QualityGateConfig | None = None) -> None:
        self.config = config or QualityGateConfig()
        self.report = QualityReport()

    def observe(self, raw: np.ndarray, sample_rate_hz: int, conditioned: Preprocessed) -> bool:
        """Judge one window (as captured at `sample_rate_hz`); True when it may be enrolled."""
        return self.tally(window_problem(raw, conditioned), len(raw) / sample_rate_hz)

    def tally(self, problem: str | None, seconds: float) -> bool:
        """Count one window already judged by `window_problem`; True when it may be enrolled."""
        self.report.windows += 1
        self.report.seconds += seconds
        if problem is not None:
            self.report.dropped[problem] += 1
            return False
        self.report.accepted += 1
        self.report.accepted_seconds += seconds
        return True

    def verdict(self, require_amount: bool = True) -> QualityReport:
        """The report when the recording is usable; raises QualityRejectedError otherwise.

        `require_amount=False` skips the minimum seconds and windows: the windows of one
        alarm ("this alarm was normal") are few, and the threshold's statistics come from
        the whole bank they join."""
        c, r = self.config, self.report
        if r.windows == 0:
            raise QualityRejectedError(
                "too_short", "no complete window was recorded: record (or give files) at least "
                f"{c.min_seconds:g} s of the machine running normally",
            )
        fractions = {
            SILENT: (r.dropped[SILENT] / r.windows, c.max_silent_fraction,
                     "is the machine running and the microphone connected and unmuted?"),
            CLIPPED: (r.dropped[CLIPPED] / r.windows, c.max_clipped_fraction,
                      "lower the input gain or move the microphone away from the machine"),
            "unlike_machine_noise": (
                (r.dropped[STUCK] + r.dropped[TONAL]) / r.windows, c.max_unlike_fraction,
                "the input is stuck, disconnected or a test tone; check the microphone"),
        }
        words = {SILENT: "silent", CLIPPED: "clipped",
                 "unlike_machine_noise": "constant or a pure tone, unlike machine noise"}
        for reason, (fraction, limit, fix) in fractions.items():
            if fraction > limit:
                raise QualityRejectedError(
                    reason, f"recording rejected: {fraction:.0%} of {r.windows} windows are "
                    f"{words[reason]} (at most {limit:.0%} allowed): {fix}",
                )
        if not require_amount:
            if r.accepted == 0:
                raise QualityRejectedError(
                    "too_few_windows", f"rejected: none of the {r.windows} windows is usable")
            return r
        if r.accepted_seconds < c.min_seconds:
            raise QualityRejectedError(
                "too_short", f"recording rejected: too short, {r.accepted_seconds:.1f} s usable "
                f"of {r.seconds:.1f} s; at least {c.min_seconds:g} s are needed: record longer",
            )
        if r.accepted < c.min_windows:
            raise QualityRejectedError(
                "too_few_windows", f"recording rejected: {r.accepted} usable window(s), at "
                f"least {c.min_windows} are needed: record longer or give more files",
            )
        return r
