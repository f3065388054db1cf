"""Enrolment sessions through the manager: files, recording taps, refusals, cancel, rollback."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from enroll_support import (
    GATE,
    NEW_SPEC,
    OLD_SPEC,
    RATE,
    machine_audio,
    make_detector,
    mean_score,
    write_clips,
)

from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.core.scoring import SOURCE, TARGET, TARGET_SYN
from edge_monitor.enrolment.audit import AUDIT_NAME
from edge_monitor.enrolment.bank_store import BankStore, EnrolmentBusyError, StoreLock
from edge_monitor.enrolment.manager import EnrolmentManager
from edge_monitor.enrolment.quality_gate import QualityRejectedError


class Box:
    """The running detectors and what the manager asked of the daemon, as the daemon would."""

    def __init__(self, detector):
        self.detectors = {"pump": detector}
        self.taps: list = []
        self.enrolling: list[bool] = []
        self.fail_swap = False

    def swap(self, machine, detector):
        if self.fail_swap:
            raise EdgeMonitorError("the processing loop is not running")
        self.detectors[machine] = detector

    def manager(self, state_dir, live=True):
        extra = {}
        if live:
            extra = dict(add_tap=lambda m, tap: self.taps.append(tap),
                         remove_tap=lambda m, tap: self.taps.remove(tap),
                         set_enrolling=lambda m, on: self.enrolling.append(on))
        return EnrolmentManager(state_dir, self.detectors.get, self.swap, gate=GATE, **extra)


@pytest.fixture(scope="module")
def detector():
    return make_detector(scoring="dads", seconds=20.0)


@pytest.fixture(scope="module")
def new_clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("new"), NEW_SPEC, 6)


@pytest.fixture(scope="module")
def held_out():
    """Unseen audio of the old and new normal sound, to score before and after."""
    return machine_audio(OLD_SPEC, 26.0)[20 * RATE:], machine_audio(NEW_SPEC, 20.0)[14 * RATE:]


def test_enrol_from_files_teaches_the_new_normal(tmp_path, detector, new_clips, held_out):
    box = Box(detector)
    manager = box.manager(tmp_path, live=False)
    old_audio, new_audio = held_out
    assert mean_score(detector, new_audio) > detector.threshold  # a new normal: false alarms

    result = manager.enrol_files("pump", new_clips, "tech-anna")

    served = box.detectors["pump"]
    assert served is not detector
    assert result["old_versions"] == {"logmel-stats": detector.bank_version}
    assert result["new_versions"] == {"logmel-stats": served.bank_version}
    assert result["windows"] == 6 and result["threshold_new"] == served.threshold
    assert mean_score(served, new_audio) < served.threshold
    assert mean_score(served, old_audio) < served.threshold
    bank = served.members[0].bank
    old_bank = detector.members[0].bank
    assert int(np.sum(bank.domains == SOURCE)) == int(np.sum(old_bank.domains == SOURCE))
    assert int(np.sum(bank.domains == TARGET)) == 6
    assert int(np.sum(bank.domains == TARGET_SYN)) == 6 * bank.config.n_syn > 0
    assert bank.info["parent_version"] == detector.bank_version
    # Written beside the old one, and the audit log says who, what and which versions.
    store = BankStore(tmp_path, "pump")
    assert store.pointer()["current"] == result["new_versions"]
    assert store.pointer()["previous"] == result["old_versions"]
    [record] = manager.audit.read()
    assert (tmp_path / AUDIT_NAME).is_file()
    assert record["who"] == "tech-anna" and record["outcome"] == "done"
    assert record["clips"] == 6 and record["seconds"] == 6.0 and record["source"] == "files"
    assert record["old_versions"] == result["old_versions"]
    assert record["new_versions"] == result["new_versions"]

    # A second enrolment (another recording of the new sound) builds on the current bank:
    # both enrolments' entries are kept.
    more = write_clips(tmp_path / "more", dataclasses.replace(NEW_SPEC, seed=5), 4)
    again = manager.enrol_files("pump", more, "tech-ben")
    bank2 = box.detectors["pump"].members[0].bank
    assert int(np.sum(bank2.domains == TARGET)) == 10
    assert again["old_versions"] == result["new_versions"]

    # Rollback serves the previous version again, and says so in the audit log.
    back = manager.rollback("pump", "tech-ben")
    assert back["new_versions"] == result["new_versions"]
    assert box.detectors["pump"].bank_version == served.bank_version
    assert manager.audit.read()[-1]["event"] == "rollback"


def test_ensemble_enrolment_updates_every_model(tmp_path, new_clips):
    ensemble = make_detector(("a", "b"), seconds=12.0)
    box = Box(ensemble)
    result = box.manager(tmp_path, live=False).enrol_files("pump", new_clips, "t")
    assert set(result["new_versions"]) == {"a", "b"}
    served = box.detectors["pump"]
    for member in served.members:
        assert int(np.sum(member.bank.domains == TARGET)) == 6


def test_rejected_recording_changes_nothing(tmp_path, detector):
    from edge_monitor.demo.synth import write_audio

    silent = [write_audio(tmp_path / f"s{i}.flac", np.zeros(RATE, np.float32), RATE)
              for i in range(6)]
    box = Box(detector)
    manager = box.manager(tmp_path / "state", live=False)
    with pytest.raises(QualityRejectedError, match="silent"):
        manager.enrol_files("pump", silent, "t")
    assert box.detectors["pump"] is detector
    assert BankStore(tmp_path / "state", "pump").pointer()["current"] == {
        "logmel-stats": detector.bank_version}
    record = manager.audit.read()[-1]
    assert record["outcome"] == "failed" and "silent" in record["error"]
    assert record["dropped"] == {"silent": 6}
    # The lock was released: the next enrolment may run.
    assert manager.status()["active"] is None
    StoreLock(tmp_path / "state").acquire("check")


def test_live_session_collects_commits_and_refuses_a_second(tmp_path, detector, held_out):
    box = Box(detector)
    manager = box.manager(tmp_path)
    manager.start("pump", 4.0, "mqtt:r1")
    [tap] = box.taps
    assert box.enrolling == [True]
    with pytest.raises(EnrolmentBusyError, match="enrolment of pump started by mqtt:r1"):
        manager.start("pump", 4.0, "mqtt:r2")
    with pytest.raises(EnrolmentBusyError):
        manager.enrol_files("pump", ["/nonexistent.flac"], "cli")
    with pytest.raises(EnrolmentBusyError, match="rollback of pump refused"):
        manager.rollback("pump", "cli")
    other = box.manager(tmp_path)  # another process or manager on the same state dir
    with pytest.raises(EnrolmentBusyError, match="another enrolment or rollback is running"):
        other.enrol_files("pump", ["/nonexistent.flac"], "cli")
    with pytest.raises(BadInputError, match="still recording"):
        manager.commit("pump", "mqtt:r3")

    # The tap gets the machine's audio as captured, at the source's rate, in odd chunks.
    audio = machine_audio(NEW_SPEC, 5.0)
    source_rate = 48000
    from edge_monitor.core.audio_io import resample

    captured = resample(audio, RATE, source_rate)
    frame = 0
    for size in (4800, 7000, 333, 12000, 999) * 12:
        tap.feed(captured[frame:frame + size], source_rate, frame)
        frame += size
        if frame >= len(captured):
            break
    assert manager.status()["active"]["state"] == "recorded"
    assert box.taps == [] and box.enrolling == [True, False]
    result = manager.commit("pump", "mqtt:r4")
    assert result["windows"] == 4
    new_audio = held_out[1]
    assert mean_score(box.detectors["pump"], new_audio) < box.detectors["pump"].threshold
    assert manager.status()["last"]["state"] == "done"


def test_gaps_in_live_audio_never_splice_windows(tmp_path, detector):
    box = Box(detector)
    manager = box.manager(tmp_path)
    manager.start("pump", 3.0, "t")
    [tap] = box.taps
    audio = machine_audio(NEW_SPEC, 6.0)
    tap.feed(audio[:RATE // 2], RATE, 0)
    tap.feed(audio[RATE:3 * RATE], RATE, RATE)  # half a second lost: starts over
    assert manager.status()["active"]["quality"]["windows"] == 2
    tap.feed(audio[3 * RATE:4 * RATE], RATE, 3 * RATE)
    assert manager.status()["active"]["state"] == "recorded"


def test_cancel_leaves_the_running_bank_untouched(tmp_path, detector):
    box = Box(detector)
    manager = box.manager(tmp_path)
    manager.start("pump", 10.0, "t")
    [tap] = box.taps
    tap.feed(machine_audio(NEW_SPEC, 3.0), RATE, 0)
    with pytest.raises(BadInputError, match="no enrolment of fan is running"):
        manager.cancel("fan", "t")
    assert manager.cancel("pump", "t")["cancelled"]
    assert box.taps == [] and box.enrolling == [True, False]
    assert box.detectors["pump"] is detector
    assert not (tmp_path / "banks" / "pump" / "current.json").exists()
    assert manager.audit.read()[-1]["outcome"] == "cancelled"
    with pytest.raises(BadInputError, match="no enrolment of pump"):
        manager.commit("pump", "t")
    manager.start("pump", 2.0, "t")  # free again
    manager.cancel("pump", "t")


def test_failed_swap_restores_the_pointer(tmp_path, detector, new_clips):
    box = Box(detector)
    box.fail_swap = True
    manager = box.manager(tmp_path, live=False)
    with pytest.raises(EdgeMonitorError, match="not running"):
        manager.enrol_files("pump", new_clips, "t")
    assert box.detectors["pump"] is detector
    pointer = BankStore(tmp_path, "pump").pointer()
    assert pointer["current"] == {"logmel-stats": detector.bank_version}
    assert manager.audit.read()[-1]["outcome"] == "failed"


def test_refusals_name_the_problem(tmp_path, detector):
    box = Box(detector)
    box.detectors["fan"] = None  # still learning
    manager = box.manager(tmp_path, live=False)
    with pytest.raises(BadInputError, match="live recording needs the running daemon"):
        manager.start("pump", 5.0, "t")
    with pytest.raises(BadInputError, match="still learning"):
        manager.enrol_files("fan", ["/x.flac"], "t")
    with pytest.raises(BadInputError, match="no files given"):
        manager.enrol_files("pump", [], "t")
    with pytest.raises(BadInputError, match="no such audio file"):
        manager.enrol_files("pump", [tmp_path / "missing.flac"], "t")
    with pytest.raises(BadInputError, match=r"nothing to roll back|no enrolment"):
        manager.rollback("pump", "t")
    live = box.manager(tmp_path)
    with pytest.raises(BadInputError, match="seconds"):
        live.start("pump", 0.0, "t")
    assert live.status()["active"] is None


def test_a_forgotten_enrolment_does_not_block_the_box(tmp_path, detector):
    box = Box(detector)
    manager = box.manager(tmp_path)
    manager.start("pump", 2.0, "mqtt:forgotten")
    [tap] = box.taps
    tap.feed(machine_audio(NEW_SPEC, 2.5), RATE, 0)  # recorded, never committed
    with pytest.raises(EnrolmentBusyError):
        manager.start("pump", 2.0, "mqtt:next")
    manager.pending_timeout_s = 0.0  # as if an hour had passed
    manager.start("pump", 2.0, "mqtt:next")
    assert manager.status()["active"]["requester"] == "mqtt:next"
    expired = [a for a in manager.audit.read() if a["event"] == "enrolment"]
    assert expired[-1]["who"] == "mqtt:forgotten" and expired[-1]["outcome"] == "cancelled"
    assert "not committed within" in expired[-1]["error"]
    assert box.detectors["pump"] is detector
