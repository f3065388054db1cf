"""The synthetic machine: deterministic, sane levels, and faults the default embedder hears."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.errors import BadInputError
from edge_monitor.core.preprocess import preprocess
from edge_monitor.demo.synth import (
    FAULT_KINDS,
    PEAK_LIMIT,
    FaultSegment,
    MachineSpec,
    demo_timeline,
    faults_in,
    schedule_rows,
    synthesize,
    write_audio,
    write_schedule_csv,
)

SR = 16000
SECONDS = 6.0


def _band_db(x: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    """Share of the clip's power between lo_hz and hi_hz, in dB."""
    freqs, power = signal.welch(x, SR, nperseg=4096)
    band = power[(freqs >= lo_hz) & (freqs < hi_hz)].sum()
    return float(10.0 * np.log10(band / power.sum()))


def _embed(x: np.ndarray) -> np.ndarray:
    """The daemon's default embedding of a clip: preprocess, then `logmel-stats`."""
    return LogMelStatsEmbedder(sample_rate_hz=SR).embed(preprocess(x, SR).audio)


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    return synthesize(MachineSpec(seed=1), SECONDS)


@pytest.fixture(scope="module")
def other_normal() -> np.ndarray:
    return synthesize(MachineSpec(seed=2), SECONDS)


def test_same_seed_same_samples_other_seed_other_samples(normal: np.ndarray) -> None:
    again = synthesize(MachineSpec(seed=1), SECONDS)
    other = synthesize(MachineSpec(seed=2), SECONDS)
    assert np.array_equal(normal, again)
    assert not np.allclose(normal, other)


def test_length_dtype_rate_and_level(normal: np.ndarray) -> None:
    assert normal.dtype == np.float32
    assert normal.shape == (round(SECONDS * SR),)
    assert synthesize(MachineSpec(), 1.5, sample_rate_hz=22050).shape == (33075,)
    rms_dbfs = 20.0 * np.log10(np.sqrt(np.mean(normal.astype(np.float64) ** 2)))
    assert rms_dbfs == pytest.approx(MachineSpec().level_dbfs, abs=0.5)
    assert float(np.max(np.abs(normal))) < 0.9


def test_loud_faults_never_clip() -> None:
    spec = MachineSpec(seed=3, level_dbfs=-12.0)
    faults = [FaultSegment(kind, 0.0, 2.0, 1.0) for kind in FAULT_KINDS]
    loud = synthesize(spec, 2.0, faults=faults)
    assert float(np.max(np.abs(loud))) <= PEAK_LIMIT + 1e-6


def test_faults_leave_the_normal_stretches_alone(normal: np.ndarray) -> None:
    faulty = synthesize(MachineSpec(seed=1), SECONDS, faults=[FaultSegment("bearing", 2.0, 4.0)])
    assert np.array_equal(faulty[: 2 * SR], normal[: 2 * SR])
    assert np.array_equal(faulty[4 * SR :], normal[4 * SR :])
    assert not np.allclose(faulty[2 * SR : 4 * SR], normal[2 * SR : 4 * SR])


@pytest.mark.parametrize(
    ("kind", "lo_hz", "hi_hz", "min_rise_db"),
    [
        ("bearing", 2000.0, 8000.0, 6.0),  # impacts ring high resonances
        ("imbalance", 40.0, 60.0, 3.0),  # 1x of a 49.2 Hz shaft (already the largest tone)
        ("rubbing", 2000.0, 8000.0, 4.0),  # broadband scraping
        ("looseness", 15.0, 40.0, 3.0),  # the 0.5x sub-harmonic
    ],
)
def test_each_fault_moves_its_band_and_the_default_embedding(
    normal: np.ndarray,
    other_normal: np.ndarray,
    kind: str,
    lo_hz: float,
    hi_hz: float,
    min_rise_db: float,
) -> None:
    faulty = synthesize(MachineSpec(seed=2), SECONDS, faults=[FaultSegment(kind, 0.0, SECONDS)])
    assert abs(_band_db(other_normal, lo_hz, hi_hz) - _band_db(normal, lo_hz, hi_hz)) < 1.0
    assert _band_db(faulty, lo_hz, hi_hz) - _band_db(normal, lo_hz, hi_hz) > min_rise_db

    reference = _embed(normal)
    normal_distance = 1.0 - float(reference @ _embed(other_normal))
    fault_distance = 1.0 - float(reference @ _embed(faulty))
    assert fault_distance > 10.0 * normal_distance


def test_demo_timeline_starts_normal_and_alternates() -> None:
    timeline = demo_timeline(300.0)
    assert timeline[0].start_s >= 60.0
    assert len(timeline) >= 4
    assert [s.kind for s in timeline[:4]] == list(FAULT_KINDS)
    for before, after in itertools.pairwise(timeline):
        assert after.start_s - before.end_s >= 10.0
    assert all(15.0 <= s.end_s - s.start_s <= 20.0 for s in timeline)
    assert timeline[-1].end_s <= 300.0
    assert demo_timeline(60.0) == []
    assert faults_in(timeline, 0.0, 60.0) == []
    assert faults_in(timeline, timeline[0].start_s - 5.0, timeline[0].start_s + 5.0) == [
        timeline[0].kind
    ]


def test_schedule_rows_cover_the_clip_and_join_overlaps() -> None:
    rows = schedule_rows(
        [FaultSegment("bearing", 2.0, 5.0, 0.5), FaultSegment("rubbing", 4.0, 6.0, 1.0)], 8.0
    )
    assert rows == [
        (0.0, 2.0, "normal", 0.0),
        (2.0, 4.0, "bearing", 0.5),
        (4.0, 5.0, "bearing+rubbing", 1.0),
        (5.0, 6.0, "rubbing", 1.0),
        (6.0, 8.0, "normal", 0.0),
    ]


def test_writers_round_trip(tmp_path, normal: np.ndarray) -> None:
    for name in ("clip.flac", "clip.wav"):
        path = write_audio(tmp_path / name, normal, SR)
        back, rate = sf.read(path, dtype="float32")
        assert rate == SR
        assert back.shape == normal.shape
        assert float(np.max(np.abs(back - normal))) < 1e-4
    timeline = demo_timeline(120.0)
    write_schedule_csv(tmp_path / "schedule.csv", timeline, 120.0)
    with open(tmp_path / "schedule.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0] == {
        "start_s": "0.000",
        "end_s": "75.000",
        "label": "normal",
        "severity": "0.000",
    }
    assert rows[1]["label"] == "bearing"
    assert rows[-1]["end_s"] == "120.000"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.flac", "clip.wav", "schedule.csv"]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: FaultSegment("grinding", 0.0, 1.0), "FaultSegment.kind"),
        (lambda: FaultSegment("bearing", -1.0, 1.0), "FaultSegment.start_s"),
        (lambda: FaultSegment("bearing", 2.0, 1.0), "FaultSegment.end_s"),
        (lambda: FaultSegment("bearing", 0.0, 1.0, 1.5), "FaultSegment.severity"),
        (lambda: FaultSegment("bearing", 0.0, float("nan")), "FaultSegment.end_s"),
        (lambda: MachineSpec(shaft_hz=0.0), "MachineSpec.shaft_hz"),
        (lambda: MachineSpec(noise_colour="blue"), "MachineSpec.noise_colour"),
        (lambda: MachineSpec(harmonics=0), "MachineSpec.harmonics"),
        (
            lambda: synthesize(MachineSpec(), 2.0, faults=[FaultSegment("bearing", 1.0, 3.0)]),
            "faults[0].end_s",
        ),
        (lambda: synthesize(MachineSpec(), -1.0), "seconds"),
        (lambda: synthesize(MachineSpec(), 1.0, sample_rate_hz=100), "sample_rate_hz"),
        (lambda: write_audio("/tmp/clip.mp3", np.zeros(10, np.float32), SR), ".mp3"),
        (lambda: demo_timeline(100.0, fault_s=0.0), "fault_s"),
    ],
)
def test_bad_arguments_name_the_field(make, field: str) -> None:
    with pytest.raises(BadInputError, match=field.replace("[", r"\[").replace("]", r"\]")):
        make()
