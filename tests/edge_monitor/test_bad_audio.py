"""Bad audio is reported, not scored (issue 12): rates outside the bounds, empty, garbage,
truncated, NaN/inf and corrupt FLAC files put the machine into `fault` like a dead
microphone and a back-test exits 2 with the count; `edge-monitor score` refuses a clipped
file as the daemon does, through the same input check."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from daemon_support import RATE, DaemonThread, small_config, synth, write_config, write_flac
from test_bundle import logmel_entry, make_tree
from test_daemon import logged_statuses

from edge_monitor.cli import main as monitor_main
from edge_monitor.core.audio_io import MAX_AUDIO_RATE_HZ, MIN_AUDIO_RATE_HZ, read_audio
from edge_monitor.core.errors import AudioFileError
from edge_monitor.core.scoring_config import ScoringConfig
from trainer.bundle_builder import build_bundle
from trainer.dcase_data import read_dataset


def _wav(path: Path, audio: np.ndarray, rate: int = RATE) -> Path:
    sf.write(path, audio.astype(np.float32), rate, subtype="FLOAT")
    return path


def _truncated_flac(path: Path) -> Path:
    write_flac(path, synth(4.0, seed=3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still promises 4 s
    return path


def _corrupt_flac(path: Path) -> Path:
    write_flac(path, synth(4.0, seed=4))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)  # frames overwritten, the header intact
    path.write_bytes(bytes(data))
    return path


BAD_FILES = {
    "empty": lambda p: (p.write_bytes(b""), p)[1],
    "garbage": lambda p: (p.write_bytes(np.random.default_rng(1).bytes(50_000)), p)[1],
    "header-only": lambda p: _wav(p, np.zeros(0)),
    "truncated": _truncated_flac,
    "corrupt-flac": _corrupt_flac,
    "nan": lambda p: _wav(p, np.where(np.arange(RATE * 2) % 7 == 0, np.nan, 0.1)),
    "inf": lambda p: _wav(p, np.where(np.arange(RATE * 2) % 7 == 0, np.inf, 0.1)),
    "1-hz": lambda p: _wav(p, np.ones(4), rate=1),
    "7350-hz": lambda p: _wav(p, 0.1 * np.sin(np.arange(7350 * 3) * 0.3), rate=7350),
}
SUFFIX = {"truncated": ".flac", "corrupt-flac": ".flac"}


def _bad(tmp_path: Path, kind: str) -> Path:
    return BAD_FILES[kind](tmp_path / f"b_{kind}{SUFFIX.get(kind, '.wav')}")


@pytest.mark.parametrize("rate", [1, 7350, 8000, MAX_AUDIO_RATE_HZ + 1])
def test_a_rate_outside_the_bounds_is_refused_not_resampled(tmp_path, rate) -> None:
    path = _wav(tmp_path / "odd.wav", 0.1 * np.ones(max(rate, 4)), rate)
    with pytest.raises(AudioFileError) as err:
        read_audio(path, RATE)
    assert str(path) in str(err.value)
    assert f"sample rate {rate} Hz is outside {MIN_AUDIO_RATE_HZ}...{MAX_AUDIO_RATE_HZ}" in str(
        err.value)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_an_unreadable_replay_file_is_a_fault_and_the_back_test_exits_2(
    tmp_path, caplog, kind
) -> None:
    caplog.set_level(logging.INFO)
    bad = _bad(tmp_path, kind)
    good = write_flac(tmp_path / "c_good.flac", synth(2.0))
    daemon = DaemonThread(write_config(tmp_path, small_config(tmp_path, [bad, good])))
    assert daemon.wait(60) == 2
    logged = logged_statuses(caplog)
    faults = [reason for status, reason in logged if status == "fault"]
    assert faults and faults[0].startswith("unreadable input: ") and bad.name in faults[0]
    assert logged[-1][0] == "learning"  # audio flowed again: the fault cleared by itself
    summary = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(summary) == 1 and summary[0].startswith("replay: 1 of 2 file(s)")
    assert bad.name in summary[0]
    assert daemon.daemon.source.stats().skipped_files == 1


def test_an_unreadable_last_file_is_published_as_a_fault(tmp_path, mosquitto, mqtt_recorder):
    good = write_flac(tmp_path / "a_good.flac", synth(2.0))
    bad = _bad(tmp_path, "7350-hz")
    config = small_config(tmp_path, [good, bad],
                          mqtt={"enabled": True, "host": mosquitto.host, "port": mosquitto.port})
    recorder = mqtt_recorder(mosquitto, ["edge-monitor/#"])
    assert DaemonThread(write_config(tmp_path, config)).wait(60) == 2
    root = "edge-monitor/test-box"
    recorder.wait_topic(f"{root}/availability", 2)
    state = json.loads(recorder.on(f"{root}/machines/pump/state")[-1].payload)
    assert state["status"] == "fault" and "7350 Hz is outside" in state["reason"]


def test_a_back_test_of_good_files_still_exits_0(tmp_path) -> None:
    good = write_flac(tmp_path / "a.flac", synth(2.0))
    assert DaemonThread(write_config(tmp_path, small_config(tmp_path, [good]))).wait(60) == 0


@pytest.fixture(scope="module")
def logmel_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("score")
    data = make_tree(base / "data")
    bundle = build_bundle(base / "b", [logmel_entry()], read_dataset(data), ScoringConfig(k=2),
                          0.1)
    return data, bundle


def _score(bundle: Path, out: Path, *files: Path) -> int:
    return monitor_main(["score", "--bundle", str(bundle), "--out", str(out),
                         *[str(f) for f in files]])


def test_score_refuses_a_clipped_file_as_the_daemon_faults_on_it(
    logmel_bundle, tmp_path, caplog, capsys
) -> None:
    data, bundle = logmel_bundle
    clean = next((data / "fan" / "test").glob("*normal*"))
    audio, rate = sf.read(clean, dtype="float32")
    huge = _wav(tmp_path / "huge.wav", audio * np.float32(1e30), rate)
    out = tmp_path / "scores.csv"
    assert _score(bundle, out, clean, huge) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 of 2 file(s) not scored" in error and "huge.wav: clipping" in error
    with open(out) as handle:
        rows = list(csv.reader(handle))
    assert [row[0] for row in rows] == ["filename", clean.name]  # the clean one is scored

    # The daemon, fed the same samples, faults on clipping instead of scoring them.
    caplog.set_level(logging.INFO)
    long_huge = _wav(tmp_path / "long_huge.wav", np.tile(audio, 4) * np.float32(1e30), rate)
    config = small_config(tmp_path, [long_huge])
    assert DaemonThread(write_config(tmp_path, config)).wait(60) == 0
    reasons = [reason for status, reason in logged_statuses(caplog) if status == "fault"]
    assert reasons and reasons[0].startswith("clipping")


@pytest.mark.parametrize("kind", ["garbage", "nan", "7350-hz", "silent"])
def test_score_counts_files_it_cannot_judge(logmel_bundle, tmp_path, capsys, kind) -> None:
    data, bundle = logmel_bundle
    clean = next((data / "fan" / "test").glob("*normal*"))
    bad = (_wav(tmp_path / "silent.wav", np.zeros(RATE)) if kind == "silent"
           else _bad(tmp_path, kind))
    assert _score(bundle, tmp_path / "s.csv", clean, bad) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 of 2 file(s) not scored" in error and bad.name in error
