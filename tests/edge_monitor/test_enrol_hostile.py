"""Enrolment under hostile input and a full disk (issue 12): the same recording enrolled twice
never gives threshold 0; a stored bank with threshold 0 is refused by `check` and `run` and
can be rolled back; a full disk is one clear error with the bank left as it was."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from disk_support import fill_disk, mounted_tmpfs
from enroll_support import NEW_SPEC, looping_replay, make_detector, write_clips

from edge_monitor import cli
from edge_monitor.config.loader import load_config
from edge_monitor.config.sections import QualityGateConfig
from edge_monitor.core.errors import BankError, StorageError
from edge_monitor.core.scoring import TARGET, build_bank
from edge_monitor.core.scoring_config import ScoringConfig
from edge_monitor.daemon import plan_machines
from edge_monitor.enrolment.audit import AUDIT_NAME, AuditLog
from edge_monitor.enrolment.bank_store import BankStore, StoreLock, install_banks
from edge_monitor.enrolment.manager import EnrolmentManager
from edge_monitor.enrolment.session import FAILED, duplicate_rows

GATE = {"min_seconds": 3, "min_windows": 3}


def enrol_cli(path: Path, files: list[Path], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["enroll", "-c", str(path), "--machine", "pump", *map(str, files)])
    return code, capsys.readouterr().err


def served_threshold(path: Path) -> float:
    return plan_machines(load_config(path)).machines[0].detector.threshold


def test_duplicate_rows_keeps_one_of_equal_rows_and_drops_known_ones():
    rng = np.random.default_rng(0)
    old = rng.normal(size=(4, 8))
    new = np.vstack([rng.normal(size=(3, 8)), old[1] * 2.0])  # a known row, scaled
    new = np.vstack([new, new[0], new[0] + 1e-9])  # an exact and a near-exact repeat
    assert duplicate_rows(old, new).tolist() == [False, False, False, True, True, True]
    assert not duplicate_rows(old[:0], rng.normal(size=(5, 8))).any()


def test_the_same_recording_enrolled_twice_keeps_a_real_threshold(tmp_path, capsys, caplog):
    path, _ = looping_replay(tmp_path, enrolment=GATE)
    clips = write_clips(tmp_path / "new", NEW_SPEC, 6)
    code, err = enrol_cli(path, clips, capsys)
    assert code == 0, err
    first = served_threshold(path)
    assert first > 0
    code, err = enrol_cli(path, clips, capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "6 of 6 enrolled windows duplicate what the bank already holds" in line
    assert "nothing was changed" in line
    assert served_threshold(path) == first
    assert cli.main(["check", "-c", str(path)]) == 0


def test_a_file_given_twice_in_one_enrolment_counts_once(tmp_path, capsys, caplog):
    path, _ = looping_replay(tmp_path, enrolment=GATE)
    clips = write_clips(tmp_path / "new", NEW_SPEC, 4)
    with caplog.at_level(logging.INFO, "edge_monitor.enrolment.session"):
        code, err = enrol_cli(path, [*clips, *clips], capsys)
    assert code == 0, err
    assert "dropped 4 duplicate window(s) of 8" in caplog.text
    assert served_threshold(path) > 0


def _store_zero_threshold_bank(config_path: Path) -> None:
    """What an enrolment before this fix could leave: every entry of the bank twice."""
    config = load_config(config_path)
    detector = plan_machines(config).machines[0].detector
    store = BankStore(config.state_dir, "pump")
    with StoreLock(config.state_dir).hold("test"):
        store.ensure_seeded(detector)
        banks = {}
        for member in detector.members:
            old = member.bank
            twice = np.vstack([old.embeddings, old.embeddings])
            ids = [f"dup-{i}" for i in range(len(twice))]
            banks[member.name] = build_bank(twice, [TARGET] * len(ids), ids,
                                            ScoringConfig(k=1), dict(old.info))
        store.commit(banks, {"who": "old-version"})


def test_check_and_run_refuse_a_stored_bank_with_threshold_0_and_rollback_clears_it(
    tmp_path, capsys,
):
    path, _ = looping_replay(tmp_path, enrolment=GATE)
    _store_zero_threshold_bank(path)
    for command in ("check", "run"):
        assert cli.main([command, "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert re.search(r"machine pump: banks .* give threshold \S+, refused \(every window "
                         "would alarm", err), err
        assert "--machine pump --rollback" in err
    assert cli.main(["enroll", "-c", str(path), "--machine", "pump", "--rollback"]) == 0
    capsys.readouterr()
    assert cli.main(["check", "-c", str(path)]) == 0
    assert served_threshold(path) > 0


def test_a_zero_threshold_from_an_enrolment_is_refused_before_anything_is_written(tmp_path):
    detector = make_detector(seconds=6.0)
    store = BankStore(tmp_path, "pump")
    with StoreLock(tmp_path).hold("test"):
        store.ensure_seeded(detector)
    before = store.pointer()
    old = detector.members[0].bank
    twice = np.vstack([old.embeddings, old.embeddings])
    bank = build_bank(twice, [TARGET] * len(twice), [f"d{i}" for i in range(len(twice))],
                      ScoringConfig(k=1), {})
    refused = r"give threshold \S+, refused \(every .*nothing was changed"
    with pytest.raises(BankError, match=refused):
        install_banks(store, detector, {detector.members[0].name: bank}, {"who": "t"},
                      lambda d: None)
    assert store.pointer() == before


# A full disk ------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only): writes past it fail with ENOSPC, as on a full SD card."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE test below runs for anyone")
    with mounted_tmpfs(tmp_path / "disk", "size=1m") as mount:
        yield mount


def seeded_manager(state_dir: Path):
    detector = make_detector(seconds=6.0)
    served = {"pump": detector}
    manager = EnrolmentManager(state_dir, served.get, served.__setitem__,
                               gate=QualityGateConfig(**GATE))
    store = BankStore(state_dir, "pump")
    with StoreLock(state_dir).hold("seed"):
        store.ensure_seeded(detector)
    return manager, served, store


def test_enrolment_on_a_full_disk_is_one_clear_error_and_the_bank_is_intact(
    tiny_disk, tmp_path,
):
    clips = write_clips(tmp_path / "new", NEW_SPEC, 6)
    manager, served, store = seeded_manager(tiny_disk)
    detector, pointer = served["pump"], store.pointer()
    fill_disk(tiny_disk)
    listing = sorted(tiny_disk.rglob("*"))
    with pytest.raises(StorageError) as caught:
        manager.enrol_files("pump", clips, "tech")
    message = str(caught.value)
    assert "\n" not in message and "no space left on the device" in message, message
    assert "banks already stored are unchanged" in message
    assert served["pump"] is detector and store.pointer() == pointer
    audit = tiny_disk / AUDIT_NAME
    assert sorted(set(tiny_disk.rglob("*")) - {audit}) == listing  # no half-written version
    assert AuditLog(audit).read() == []  # the failed append left no half line
    assert manager.status()["last"]["state"] == FAILED
    assert store.current() is not None  # the old bank still loads and verifies
    (tiny_disk / "filler").unlink()
    assert manager.enrol_files("pump", clips, "tech")["windows"] == 6  # space back: it works


def test_enrolment_past_a_file_size_limit_is_one_clear_error(tmp_path):
    """The same for any user: a child process whose files may not grow past 2 KiB
    (RLIMIT_FSIZE, SIGXFSZ ignored so that writes fail with EFBIG)."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from enroll_support import NEW_SPEC, write_clips
from test_enrol_hostile import seeded_manager
from edge_monitor.core.errors import StorageError
clips = write_clips(Path({str(tmp_path / "new")!r}), NEW_SPEC, 6)
manager, served, store = seeded_manager(Path({str(tmp_path / "state")!r}))
detector, pointer = served["pump"], store.pointer()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
try:
    manager.enrol_files("pump", clips, "tech")
except StorageError as exc:
    print("refused:", exc)
print("intact:", served["pump"] is detector and store.pointer() == pointer)
print("last:", manager.status()["last"]["state"])
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "cannot write the bank" in done.stdout, done.stdout
    assert "intact: True" in done.stdout and "last: failed" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
