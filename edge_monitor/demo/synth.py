"""A rotating-machine sound synthesiser with injectable faults, for the demo and for tests.

The demo must show alarms on a box with no microphone and no recordings, so it needs a
machine whose faults are physically plausible rather than arbitrary tones: every sound here
is locked to one shaft angle, and every fault is the textbook signature of a real defect.

Normal machine: shaft harmonics (1x..Nx) whose amplitudes and phases wander slowly, a motor
whine at the rotor-slot order, gear-mesh tones with 1x sidebands, coloured broadband noise,
and a small random speed wander that moves every order together.

Faults (each a `FaultSegment` with a severity in (0, 1]):
- ``bearing``: an inner-race defect struck at a non-integer order of the shaft rate, each
  impact ringing a high-frequency structural resonance, amplitude-modulated as the defect
  rotates through the load zone.
- ``imbalance``: a strong rise of the 1x harmonic (and some 2x), with the rest of the
  machine's tones amplitude-modulated at 1x by the resulting structural vibration.
- ``rubbing``: intermittent broadband scraping bursts, one per revolution at the contact
  angle, coming and going from one revolution to the next.
- ``looseness``: a dense, slowly decaying series of half-order harmonics (0.5x, 1x, 1.5x,
  ... 20x), the clipped response of a part that lifts and lands each revolution.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from edge_monitor.core.atomic import atomic_path, atomic_write_text
from edge_monitor.core.audio_io import MAX_AUDIO_RATE_HZ, MIN_AUDIO_RATE_HZ
from edge_monitor.core.errors import BadInputError

log = logging.getLogger(__name__)

FAULT_KINDS = ("bearing", "imbalance", "rubbing", "looseness")
NOISE_COLOURS = ("white", "pink", "brown")

PEAK_LIMIT = 0.89
"""Largest absolute sample value written; the whole clip is scaled down to stay under it."""

CONTROL_RATE_HZ = 100.0
"""Rate at which slow random processes (speed, amplitude wander) are drawn and interpolated."""
WANDER_CORNER_HZ = 0.3
SPEED_CORNER_HZ = 0.8
NOISE_LOW_CUT_HZ = 20.0
ALIAS_GUARD = 0.45
"""Tones above this fraction of the sample rate are left out, so speed wander cannot alias."""
FAULT_FADE_S = 0.25
BLOCK_SAMPLES = 1 << 18

BEARING_ORDER = 5.43
"""Ball-pass frequency of the inner race as a multiple of the shaft rate (typical 6-9 balls)."""
BEARING_RESONANCES_HZ = (3150.0, 5400.0)
BEARING_DECAY_S = 0.0012
BEARING_RMS = 0.8
RUB_BAND_HZ = (700.0, 6000.0)
RUB_CONTACT_WIDTH = 0.4
"""Fraction of a revolution during which the rotor scrapes the stator."""
RUB_RMS = 0.6
LOOSE_MAX_ORDER = 20.0
LOOSE_DECAY = 0.3
LOOSE_RMS = 1.0
IMBALANCE_1X_GAIN = 6.0
IMBALANCE_2X_GAIN = 1.5
IMBALANCE_AM_DEPTH = 0.5


@dataclass(frozen=True)
class MachineSpec:
    """What the machine is: its speed, tonal make-up, noise and random seed.

    Levels of the whine, mesh and noise are relative to the 1x harmonic's amplitude (1.0);
    the whole normal sound is then scaled to `level_dbfs` RMS.
    """

    shaft_hz: float = 49.2
    harmonics: int = 10
    harmonic_decay: float = 0.7
    whine_order: float = 38.0
    whine_level: float = 0.15
    gear_teeth: int = 21
    mesh_level: float = 0.3
    noise_colour: str = "pink"
    noise_level: float = 0.5
    speed_jitter: float = 0.003
    wander: float = 0.15
    level_dbfs: float = -26.0
    seed: int = 0

    def __post_init__(self) -> None:
        _require_finite(self.shaft_hz, "MachineSpec.shaft_hz", low=1.0, high=500.0)
        if not isinstance(self.harmonics, int) or not 1 <= self.harmonics <= 64:
            raise BadInputError(
                f"MachineSpec.harmonics = {self.harmonics!r} is not an integer in [1, 64]; "
                "give the number of shaft harmonics to synthesise"
            )
        _require_finite(self.harmonic_decay, "MachineSpec.harmonic_decay", low=0.0, high=1.0)
        _require_finite(self.whine_order, "MachineSpec.whine_order", low=0.0, high=1000.0)
        _require_finite(self.whine_level, "MachineSpec.whine_level", low=0.0, high=10.0)
        if not isinstance(self.gear_teeth, int) or not 0 <= self.gear_teeth <= 1000:
            raise BadInputError(
                f"MachineSpec.gear_teeth = {self.gear_teeth!r} is not an integer in "
                "[0, 1000]; use 0 for a machine without gears"
            )
        _require_finite(self.mesh_level, "MachineSpec.mesh_level", low=0.0, high=10.0)
        if self.noise_colour not in NOISE_COLOURS:
            raise BadInputError(
                f"MachineSpec.noise_colour = {self.noise_colour!r} is unknown; "
                f"use one of {', '.join(NOISE_COLOURS)}"
            )
        _require_finite(self.noise_level, "MachineSpec.noise_level", low=0.0, high=100.0)
        _require_finite(self.speed_jitter, "MachineSpec.speed_jitter", low=0.0, high=0.1)
        _require_finite(self.wander, "MachineSpec.wander", low=0.0, high=0.9)
        _require_finite(self.level_dbfs, "MachineSpec.level_dbfs", low=-80.0, high=-10.0)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise BadInputError(f"MachineSpec.seed = {self.seed!r} is not a non-negative integer")


@dataclass(frozen=True)
class FaultSegment:
    """One fault of `kind` present from `start_s` to `end_s` with `severity` in (0, 1]."""

    kind: str
    start_s: float
    end_s: float
    severity: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise BadInputError(
                f"FaultSegment.kind = {self.kind!r} is not a known fault; "
                f"use one of {', '.join(FAULT_KINDS)}"
            )
        _require_finite(self.start_s, "FaultSegment.start_s", low=0.0)
        _require_finite(self.end_s, "FaultSegment.end_s", low=0.0)
        if self.end_s <= self.start_s:
            raise BadInputError(
                f"FaultSegment.end_s = {self.end_s} is not after start_s = {self.start_s}; "
                "a fault must last a positive time"
            )
        _require_finite(self.severity, "FaultSegment.severity", low=0.0, high=1.0)
        if self.severity == 0.0:
            raise BadInputError("FaultSegment.severity = 0 injects nothing; use a value in (0, 1]")


def synthesize(
    spec: MachineSpec,
    seconds: float,
    sample_rate_hz: int = 16000,
    faults: Sequence[FaultSegment] = (),
) -> np.ndarray:
    """Return `seconds` of the machine's sound as mono float32 in [-PEAK_LIMIT, PEAK_LIMIT].

    The same spec, length and rate always give the same samples, and the normal sound does
    not depend on which faults are injected (each fault draws from its own random stream).
    """
    if not isinstance(spec, MachineSpec):
        raise BadInputError(f"spec must be a MachineSpec, got {type(spec).__name__}")
    _require_finite(seconds, "seconds", low=0.0)
    if (
        isinstance(sample_rate_hz, bool)
        or not isinstance(sample_rate_hz, int)
        or not MIN_AUDIO_RATE_HZ <= sample_rate_hz <= MAX_AUDIO_RATE_HZ
    ):
        raise BadInputError(
            f"sample_rate_hz = {sample_rate_hz!r} is not an integer in "
            f"[{MIN_AUDIO_RATE_HZ}, {MAX_AUDIO_RATE_HZ}]"
        )
    n = round(seconds * sample_rate_hz)
    if n < 1:
        raise BadInputError(f"seconds = {seconds} gives no samples; ask for a positive length")
    for i, fault in enumerate(faults):
        if not isinstance(fault, FaultSegment):
            raise BadInputError(f"faults[{i}] is a {type(fault).__name__}, not a FaultSegment")
        if fault.end_s > seconds + 0.5 / sample_rate_hz:
            raise BadInputError(
                f"faults[{i}].end_s = {fault.end_s} is beyond the clip's end (seconds = "
                f"{seconds}); end the fault at or before the end of the clip"
            )

    streams = np.random.SeedSequence(spec.seed).spawn(3 + len(faults))
    sr = float(sample_rate_hz)
    # Noise first: its FFT is the largest transient, best taken before the tones exist.
    noise = _coloured_noise(spec.noise_colour, n, sr, np.random.default_rng(streams[2]))
    theta = _shaft_angle(spec, n, sr, np.random.default_rng(streams[0]))
    out = np.zeros(n)
    tonal, first = _tonal_parts(spec, theta, sr, out, np.random.default_rng(streams[1]))
    out += tonal
    noise *= spec.noise_level * _rms(out)
    out += noise
    del noise
    target_rms = 10.0 ** (spec.level_dbfs / 20.0)
    scale = target_rms / max(_rms(out), 1e-12)
    out *= scale
    additive = {
        "bearing": (_bearing, BEARING_RMS),
        "rubbing": (_rubbing, RUB_RMS),
        "looseness": (_looseness, LOOSE_RMS),
    }
    for fault, stream in zip(faults, streams[3:], strict=True):
        rng = np.random.default_rng(stream)
        lo = round(fault.start_s * sr)
        hi = min(round(fault.end_s * sr), n)
        if hi <= lo:
            continue
        env = _fade_envelope(hi - lo, sr)
        seg_theta = theta[lo:hi]
        if fault.kind == "imbalance":
            out[lo:hi] += scale * _imbalance(
                fault.severity, env, seg_theta, tonal[lo:hi], first, rng
            )
        else:
            make, rms = additive[fault.kind]
            out[lo:hi] += target_rms * rms * fault.severity * env * make(seg_theta, sr, rng)

    peak = float(np.max(np.abs(out)))
    if peak > PEAK_LIMIT:
        log.info(
            "scaling synthetic clip by %.3f to keep its peak under %.2f",
            PEAK_LIMIT / peak,
            PEAK_LIMIT,
        )
        out *= PEAK_LIMIT / peak
    return out.astype(np.float32)


def demo_timeline(
    total_s: float,
    lead_s: float = 75.0,
    fault_s: float = 18.0,
    gap_s: float = 20.0,
    severity: float = 1.0,
    kinds: Sequence[str] = FAULT_KINDS,
) -> list[FaultSegment]:
    """Schedule the demo's faults: normal for `lead_s`, then each kind in turn with gaps.

    The lead covers a 60 s learning phase plus some normal monitoring; a gap of 20 s outlasts
    a 10 s analysis window, so windows clean of any fault exist between alarms. Only faults
    that fit whole before `total_s` are scheduled.
    """
    _require_finite(total_s, "total_s", low=0.0)
    _require_finite(lead_s, "lead_s", low=0.0)
    _require_finite(fault_s, "fault_s", low=0.0)
    _require_finite(gap_s, "gap_s", low=0.0)
    if fault_s == 0.0:
        raise BadInputError("fault_s = 0 schedules empty faults; give a positive length")
    if not kinds:
        raise BadInputError("kinds is empty; name at least one of " + ", ".join(FAULT_KINDS))
    segments: list[FaultSegment] = []
    start = lead_s
    while start + fault_s <= total_s:
        kind = kinds[len(segments) % len(kinds)]
        segments.append(FaultSegment(kind, start, start + fault_s, severity))
        start += fault_s + gap_s
    return segments


def faults_in(segments: Sequence[FaultSegment], start_s: float, end_s: float) -> list[str]:
    """Kinds of the faults that overlap [start_s, end_s), e.g. to label an analysis window."""
    return sorted({s.kind for s in segments if s.start_s < end_s and s.end_s > start_s})


def schedule_rows(
    segments: Sequence[FaultSegment], total_s: float
) -> list[tuple[float, float, str, float]]:
    """Cover [0, total_s) with (start_s, end_s, label, severity) rows, normal stretches too.

    Overlapping faults give a joined label such as ``bearing+rubbing``.
    """
    _require_finite(total_s, "total_s", low=0.0)
    bounds = (min(t, total_s) for s in segments for t in (s.start_s, s.end_s))
    cuts = sorted({0.0, total_s, *bounds})
    rows: list[tuple[float, float, str, float]] = []
    for lo, hi in itertools.pairwise(cuts):
        active = [s for s in segments if s.start_s < hi and s.end_s > lo]
        label = "+".join(sorted({s.kind for s in active})) or "normal"
        severity = max((s.severity for s in active), default=0.0)
        if rows and rows[-1][2] == label and rows[-1][3] == severity:
            rows[-1] = (rows[-1][0], hi, label, severity)
        else:
            rows.append((lo, hi, label, severity))
    return rows


def write_schedule_csv(path: str | Path, segments: Sequence[FaultSegment], total_s: float) -> Path:
    """Write the schedule as CSV (start_s, end_s, label, severity), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["start_s", "end_s", "label", "severity"])
    for lo, hi, label, severity in schedule_rows(segments, total_s):
        writer.writerow([f"{lo:.3f}", f"{hi:.3f}", label, f"{severity:.3f}"])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate_hz: int) -> Path:
    """Write mono audio as 16-bit FLAC or WAV (chosen by the suffix), atomically."""
    path = Path(path)
    formats = {".flac": "FLAC", ".wav": "WAV"}
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise BadInputError(f"path {str(path)!r} has suffix {path.suffix!r}; use .flac or .wav")
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.size == 0:
        raise BadInputError(f"audio has shape {audio.shape}; give a non-empty mono 1-D array")
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate_hz, format=fmt, subtype="PCM_16")
    return path


@dataclass(frozen=True)
class _FirstHarmonic:
    """The 1x tone's settings, which imbalance builds on."""

    amplitude: float
    phase: float


def _shaft_angle(spec: MachineSpec, n: int, sr: float, rng: np.random.Generator) -> np.ndarray:
    """Shaft angle in radians per sample, with a slow random speed wander."""
    wobble = _SlowProcess(rng, SPEED_CORNER_HZ)
    theta = np.empty(n)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    for lo, hi in _blocks(n):
        inst_hz = spec.shaft_hz * (1.0 + spec.speed_jitter * wobble.at(lo, hi, sr))
        theta[lo:hi] = angle + np.cumsum(inst_hz) * (2.0 * np.pi / sr)
        angle = theta[hi - 1]
    return theta


def _tonal_parts(
    spec: MachineSpec,
    theta: np.ndarray,
    sr: float,
    first_out: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, _FirstHarmonic]:
    """Shaft harmonics, motor whine and gear mesh (with sidebands), all locked to `theta`.

    The 1x tone is added into `first_out`; every other tone is returned as one array, kept
    apart because imbalance modulates it.
    """
    orders: list[tuple[float, float]] = [
        (float(h), spec.harmonic_decay ** (h - 1)) for h in range(1, spec.harmonics + 1)
    ]
    if spec.whine_order > 0 and spec.whine_level > 0:
        orders.append((spec.whine_order, spec.whine_level))
    if spec.gear_teeth > 0 and spec.mesh_level > 0:
        mesh = float(spec.gear_teeth)
        orders += [
            (mesh, spec.mesh_level),
            (mesh - 1.0, 0.3 * spec.mesh_level),
            (mesh + 1.0, 0.3 * spec.mesh_level),
            (2.0 * mesh, 0.35 * spec.mesh_level),
        ]
    # Draw every order's randomness, audible or not, so the streams never depend on sr.
    tones = [
        (
            order,
            level,
            rng.uniform(0.0, 2.0 * np.pi),
            _SlowProcess(rng, WANDER_CORNER_HZ),
            _SlowProcess(rng, WANDER_CORNER_HZ),
        )
        for order, level in orders
    ]
    limit_hz = ALIAS_GUARD * sr / (1.0 + 4.0 * spec.speed_jitter)
    tonal = np.zeros_like(theta)
    first = _FirstHarmonic(0.0, 0.0)
    for order, level, phase, amp_wander, phase_wander in tones:
        if order * spec.shaft_hz >= limit_hz:
            continue
        target = first_out if order == 1.0 else tonal
        if order == 1.0:
            first = _FirstHarmonic(level, phase)
        for lo, hi in _blocks(theta.size):
            amplitude = level * np.clip(1.0 + spec.wander * amp_wander.at(lo, hi, sr), 0.05, None)
            wobble = phase + 0.5 * spec.wander * phase_wander.at(lo, hi, sr)
            target[lo:hi] += amplitude * np.sin(order * theta[lo:hi] + wobble)
    return tonal, first


def _coloured_noise(colour: str, n: int, sr: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f power) or brown (1/f^2 power) noise, high-passed at 20 Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    gain = np.fft.rfftfreq(n, 1.0 / sr)
    below = gain < NOISE_LOW_CUT_HZ
    gain[below] = 1.0
    gain **= -{"white": 0.0, "pink": 0.5, "brown": 1.0}[colour]
    gain[below] = 0.0
    spectrum *= gain
    del gain
    noise = np.fft.irfft(spectrum, n)
    noise /= max(_rms(noise), 1e-12)
    return noise


def _bearing(theta: np.ndarray, sr: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS impacts at the inner-race pass order ringing structural resonances."""
    cycles = BEARING_ORDER * theta / (2.0 * np.pi)
    hits = np.nonzero(np.diff(np.floor(cycles)) > 0)[0] + 1
    impulses = np.zeros_like(theta)
    if hits.size == 0:
        return impulses
    period = 2.0 * np.pi / (BEARING_ORDER * np.mean(np.diff(theta)))
    slip = np.round(rng.normal(0.0, 0.015 * period, hits.size)).astype(int)
    hits = np.clip(hits + slip, 0, theta.size - 1)
    load_zone = 0.55 + 0.45 * np.cos(theta[hits] + rng.uniform(0.0, 2.0 * np.pi))
    np.add.at(impulses, hits, load_zone * rng.lognormal(0.0, 0.25, hits.size))
    t = np.arange(round(8 * BEARING_DECAY_S * sr)) / sr
    kernel = np.zeros_like(t)
    for freq in BEARING_RESONANCES_HZ:
        if freq < ALIAS_GUARD * sr:
            kernel += np.exp(-t / BEARING_DECAY_S) * np.sin(2.0 * np.pi * freq * t)
    return _unit_rms(signal.oaconvolve(impulses, kernel)[: theta.size])


def _rubbing(theta: np.ndarray, sr: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS band-passed scraping, gated to the contact angle of some revolutions."""
    revs = theta / (2.0 * np.pi)
    rev_index = np.floor(revs - revs[0]).astype(int)
    in_contact = rng.random(rev_index[-1] + 1) < 0.6
    contact_angle = rng.uniform(0.0, 1.0)
    offset = (revs - contact_angle + 0.5) % 1.0 - 0.5
    burst = np.clip(1.0 - np.abs(offset) / (0.5 * RUB_CONTACT_WIDTH), 0.0, None) ** 2
    high = min(RUB_BAND_HZ[1], ALIAS_GUARD * sr)
    sos = signal.butter(4, [RUB_BAND_HZ[0], high], btype="bandpass", fs=sr, output="sos")
    scrape = signal.sosfilt(sos, rng.standard_normal(theta.size))
    return _unit_rms(scrape * burst * in_contact[rev_index])


def _looseness(theta: np.ndarray, sr: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS dense series of half-order harmonics (0.5x .. 20x), slowly decaying."""
    out = np.zeros_like(theta)
    for order in np.arange(0.5, LOOSE_MAX_ORDER + 0.25, 0.5):
        if order * np.mean(np.diff(theta)) * sr / (2.0 * np.pi) >= ALIAS_GUARD * sr:
            break
        out += order**-LOOSE_DECAY * np.sin(order * theta + rng.uniform(0.0, 2.0 * np.pi))
    return _unit_rms(out)


def _imbalance(
    severity: float,
    env: np.ndarray,
    theta: np.ndarray,
    tonal: np.ndarray,
    first: _FirstHarmonic,
    rng: np.random.Generator,
) -> np.ndarray:
    """What imbalance adds, in unscaled units: more 1x and 2x, and 1x modulation of the rest."""
    depth = IMBALANCE_AM_DEPTH * severity * env
    level = max(first.amplitude, 0.3)
    extra = IMBALANCE_1X_GAIN * severity * env * level * np.sin(
        theta + first.phase
    ) + IMBALANCE_2X_GAIN * severity * env * level * 0.5 * np.sin(
        2.0 * theta + rng.uniform(0.0, 2.0 * np.pi)
    )
    return extra + depth * np.sin(theta + rng.uniform(0.0, 2.0 * np.pi)) * tonal


class _SlowProcess:
    """Unit-variance smooth random wander below `corner_hz`: a few random low sinusoids.

    Evaluated at a control rate and interpolated, so long clips cost little, and its variance
    does not depend on the clip's length.
    """

    COMPONENTS = 4

    def __init__(self, rng: np.random.Generator, corner_hz: float) -> None:
        self.freqs = rng.uniform(0.1 * corner_hz, corner_hz, self.COMPONENTS)
        self.phases = rng.uniform(0.0, 2.0 * np.pi, self.COMPONENTS)

    def at(self, lo: int, hi: int, sr: float) -> np.ndarray:
        """Values at samples lo..hi-1 of a clip sampled at `sr`."""
        first = math.floor(lo / sr * CONTROL_RATE_HZ)
        t_ctrl = np.arange(first, math.ceil(hi / sr * CONTROL_RATE_HZ) + 2) / CONTROL_RATE_HZ
        ctrl = np.sqrt(2.0 / self.COMPONENTS) * np.sin(
            2.0 * np.pi * self.freqs[:, None] * t_ctrl[None, :] + self.phases[:, None]
        ).sum(axis=0)
        return np.interp(np.arange(lo, hi) / sr, t_ctrl, ctrl)


def _blocks(n: int) -> list[tuple[int, int]]:
    """Sample ranges of at most BLOCK_SAMPLES covering 0..n, to bound temporary memory."""
    return [(lo, min(lo + BLOCK_SAMPLES, n)) for lo in range(0, n, BLOCK_SAMPLES)]


def _fade_envelope(length: int, sr: float) -> np.ndarray:
    """1 inside a fault, with raised-cosine ramps at both ends so it starts without a click."""
    env = np.ones(length)
    ramp = min(round(FAULT_FADE_S * sr), length // 4)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[:ramp] = rise
        env[length - ramp :] = rise[::-1]
    return env


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = _rms(x)
    return x / rms if rms > 0 else x


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.dot(x, x) / x.size)) if x.size else 0.0


def _require_finite(
    value: object, field: str, low: float | None = None, high: float | None = None
) -> None:
    """Raise BadInputError naming `field` unless `value` is a finite number in [low, high]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and not math.isfinite(value):
        ok = False
    if not ok:
        raise BadInputError(f"{field} = {value!r} is not a finite number")
    if low is not None and value < low:
        raise BadInputError(f"{field} = {value} is below {low}; give a value >= {low}")
    if high is not None and value > high:
        raise BadInputError(f"{field} = {value} is above {high}; give a value <= {high}")
