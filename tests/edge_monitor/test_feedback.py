""""This alarm was normal": the windows of an alarm are recorded by event id while it is open,
and marking it normal adds them to the machine's bank as a new version (quality gate, audit,
rollback), through the manager, MQTT and the control socket of a running daemon.

Real parts: the decision machine and alarm recorder of the processing loop, real banks and
the built-in embedder, the bank store on disk, mosquitto and the daemon on a replay source.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from daemon_support import DaemonThread, mqtt_command, small_config, write_config, write_flac
from enroll_support import (
    GATE,
    NEW_SPEC,
    OLD_SPEC,
    RATE,
    machine_audio,
    make_detector,
    prelearn,
    windows,
)

from edge_monitor.cli import main
from edge_monitor.config.sections import DecisionSection
from edge_monitor.core.detector import Detector
from edge_monitor.core.errors import BadInputError
from edge_monitor.demo.synth import FaultSegment, synthesize
from edge_monitor.enrolment import alarm_windows
from edge_monitor.enrolment.bank_store import BankStore, EnrolmentBusyError, StoreLock
from edge_monitor.enrolment.control import daemon_running, socket_path
from edge_monitor.enrolment.manager import EnrolmentManager
from edge_monitor.enrolment.quality_gate import QualityRejectedError
from edge_monitor.pipeline.alarm_recorder import AlarmRecorder
from edge_monitor.pipeline.decision import DecisionMachine

ROOT = "edge-monitor/test-box"


@pytest.fixture(scope="module")
def new_sound() -> np.ndarray:
    """The machine after a speed change (the old bank false-alarms on it): 12 s that alarm,
    24 s of the same condition held out, then 10 s of a bearing fault in that condition."""
    return synthesize(NEW_SPEC, 60.0, RATE, [FaultSegment("bearing", 50.0, 60.0)])


def replay_alarms(detector: Detector, audio: np.ndarray, recorder: AlarmRecorder) -> list[str]:
    """Score 1 s windows of `audio` one after another as the processing loop does (decision,
    then the recorder); returns the event ids of the alarms that started."""
    decision = DecisionMachine(DecisionSection(k=2, n=3, cooldown_s=0))
    start = datetime.now(timezone.utc)
    started = []
    for i, window in enumerate(windows(audio)):
        detection = detector.score(window)
        outcome = decision.observe(detection.score, detector.threshold,
                                   start + timedelta(seconds=i))
        recorder.observe(detector, window, i * RATE, (i + 1) * RATE, detection,
                         detector.threshold, decision.alarm_event_id)
        started += [t.event_id for t in outcome.transitions if t.kind == "new"]
    return started


def alarm_rate(detector: Detector, audio: np.ndarray) -> float:
    scores = np.array([detector.score(w).score for w in windows(audio)])
    return float(np.mean(scores > detector.threshold))


def test_an_alarm_marked_normal_stops_repeating_and_a_fault_still_alarms(tmp_path, new_sound):
    detector = make_detector()
    first, held_out, fault = (new_sound[:12 * RATE], new_sound[20 * RATE:44 * RATE],
                              new_sound[50 * RATE:])
    (event_id,) = replay_alarms(detector, first, AlarmRecorder("pump", tmp_path, RATE, 3))
    record = alarm_windows.load(tmp_path, "pump", event_id)
    assert len(record) == 12 and record.problems == [None] * 12  # 12 hot 1 s windows
    assert record.bank_version == detector.bank_version
    assert alarm_rate(detector, held_out) == 1.0  # the repeat false alarm, before

    running = {"pump": detector}
    manager = EnrolmentManager(tmp_path, running.get, running.__setitem__, gate=GATE)
    result = manager.alarm_was_normal("pump", event_id, "test")
    served = running["pump"]
    assert result["old_versions"] == {"logmel-stats": detector.bank_version}
    assert result["new_versions"] == {"logmel-stats": served.bank_version}
    assert served.bank_version != detector.bank_version
    assert result["windows"] == 12 and result["threshold_new"] == served.threshold
    assert result["threshold_new"] != result["threshold_old"]  # recomputed from the new bank
    bank = served.members[0].bank
    added = [c for c, d in zip(bank.clip_ids, bank.domains, strict=True)
             if d == "target" and c.startswith(f"alarm-{event_id}@")]
    assert len(added) == 12 and bank.info["enrolled_from"] == f"alarm {event_id}"
    assert alarm_rate(served, held_out) < 0.1  # the same condition no longer alarms
    assert alarm_rate(served, fault) == 1.0  # a real fault in it still does

    with pytest.raises(BadInputError) as again:
        manager.alarm_was_normal("pump", event_id, "test")
    assert "already marked normal" in str(again.value)
    store = BankStore(tmp_path, "pump")
    assert store.history()[-1]["false_alarm"] == event_id
    manager.rollback("pump", "test")
    assert running["pump"].bank_version == detector.bank_version
    audit = manager.audit.read()
    assert [(a["event"], a["outcome"]) for a in audit] == [
        ("false-alarm", "done"), ("false-alarm", "failed"), ("rollback", "done")]
    assert audit[0]["who"] == "test" and audit[0]["new_versions"] == result["new_versions"]


def test_refusals_name_the_problem_and_change_nothing(tmp_path, new_sound):
    detector = make_detector()
    (event_id,) = replay_alarms(detector, new_sound[:6 * RATE],
                                AlarmRecorder("pump", tmp_path, RATE, 3))
    running = {"pump": detector}
    manager = EnrolmentManager(tmp_path, running.get, running.__setitem__, gate=GATE)
    for bad, words in (("nope", "dashed lowercase UUID"),
                       ("00000000-0000-4000-8000-000000000000", "no stored windows")):
        with pytest.raises(BadInputError, match=words):
            manager.alarm_was_normal("pump", bad, "test")
    other = {"pump": make_detector(members=("other-model",))}
    other["pump"].model_version = "another-model"
    with pytest.raises(BadInputError, match="was scored by model test-model"):
        EnrolmentManager(tmp_path, other.get, other.__setitem__).alarm_was_normal(
            "pump", event_id, "test")
    lock = StoreLock(tmp_path)
    with lock.hold("an offline enrolment"), pytest.raises(EnrolmentBusyError):
        manager.alarm_was_normal("pump", event_id, "test")
    assert running["pump"] is detector and BankStore(tmp_path, "pump").pointer() is None


def test_windows_the_gate_refuses_are_not_added(tmp_path):
    """A test tone alarms (nothing like the machine), but its windows would teach the bank a
    tone: the quality gate rejects them."""
    detector = make_detector()
    t = np.arange(6 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    (event_id,) = replay_alarms(detector, tone, AlarmRecorder("pump", tmp_path, RATE, 3))
    assert set(alarm_windows.load(tmp_path, "pump", event_id).problems) == {"tonal"}
    running = {"pump": detector}
    manager = EnrolmentManager(tmp_path, running.get, running.__setitem__, gate=GATE)
    with pytest.raises(QualityRejectedError, match="constant or a pure tone"):
        manager.alarm_was_normal("pump", event_id, "test")
    assert running["pump"] is detector


def test_stored_windows_are_bounded(tmp_path, new_sound, monkeypatch):
    """At most MAX_WINDOWS non-overlapping windows an alarm, MAX_ALARMS alarms a machine."""
    monkeypatch.setattr(alarm_windows, "MAX_WINDOWS", 4)
    monkeypatch.setattr(alarm_windows, "MAX_ALARMS", 2)
    detector = make_detector()
    recorder = AlarmRecorder("pump", tmp_path, RATE, 3)
    quiet = machine_audio(OLD_SPEC, 4.0)  # the bank's own sound: ends an alarm
    alarming = new_sound[:10 * RATE]
    ids = replay_alarms(detector, np.concatenate([alarming, quiet] * 3), recorder)
    assert len(ids) == 3
    kept = sorted(p.stem for p in alarm_windows.machine_dir(tmp_path, "pump").iterdir())
    assert kept == sorted(ids[1:])  # the oldest alarm's windows are gone
    assert len(alarm_windows.load(tmp_path, "pump", ids[-1])) == 4
    path = alarm_windows.path_of(tmp_path, "pump", ids[-1])
    path.write_bytes(b"junk")
    with pytest.raises(alarm_windows.AlarmWindowsError, match="unreadable"):
        alarm_windows.load(tmp_path, "pump", ids[-1])


def test_overlapping_windows_are_recorded_once(tmp_path, new_sound):
    """With a hop of half a window, only every other window joins the alarm's record."""
    detector = make_detector()
    recorder = AlarmRecorder("pump", tmp_path, RATE, 3)
    decision = DecisionMachine(DecisionSection(k=2, n=3, cooldown_s=0))
    start, half = datetime.now(timezone.utc), RATE // 2
    for i in range(0, 2 * 8):
        window = new_sound[i * half:i * half + RATE]
        detection = detector.score(window)
        decision.observe(detection.score, detector.threshold, start + timedelta(seconds=i / 2))
        recorder.observe(detector, window, i * half, i * half + RATE, detection,
                         detector.threshold, decision.alarm_event_id)
    record = recorder.record
    assert record is not None
    starts = [round(s * RATE) for s in record.start_s]
    assert all(b - a >= RATE for a, b in itertools.pairwise(starts))
    assert len(record) == 8


def test_false_alarm_over_mqtt_and_the_cli_on_a_running_daemon(tmp_path, mosquitto,
                                                                mqtt_recorder, capsys):
    """The daemon learned the old sound and now hears the machine at its new speed: it
    alarms; `enroll/false-alarm` over MQTT with the alarm's event_id swaps a bank with its
    windows in; the CLI then gets the same answer through the control socket."""
    clip = write_flac(tmp_path / "new.flac", synthesize(NEW_SPEC, 8.0, RATE))
    config = small_config(
        tmp_path, [clip],
        source={"replay": {"paths": [str(clip)], "realtime": True, "loop": True}},
        learning={"seconds": 10, "scoring": "dads"},
        mqtt={"enabled": True, "host": mosquitto.host, "port": mosquitto.port},
        enrolment={"min_seconds": GATE.min_seconds, "min_windows": GATE.min_windows},
    )
    path = write_config(tmp_path, config)
    prelearn(path)
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/#"])
    daemon = DaemonThread(path)
    try:
        events = f"{ROOT}/machines/pump/events"
        first = json.loads(recorder.wait_topic(events)[0].payload)
        assert first["type"] == "new"
        event_id = first["event_id"]
        file = alarm_windows.path_of(tmp_path / "state", "pump", event_id)
        deadline = time.monotonic() + 20
        while not file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        before = daemon.daemon.processor.snapshot()["machines"]["pump"]["bank_version"]
        reply = mqtt_command(recorder, ROOT, "enroll/false-alarm", "f1", machine="pump",
                             event_id=event_id)
        assert reply["ok"], reply
        assert reply["result"]["old_versions"] == {"logmel-stats": before}
        new = reply["result"]["new_versions"]["logmel-stats"]
        daemon.wait_until(lambda s: s["machines"]["pump"]["bank_version"] == new, "new bank")
        bad = mqtt_command(recorder, ROOT, "enroll/false-alarm", "f2", machine="pump",
                           event_id="not-an-id")
        assert not bad["ok"] and "dashed lowercase UUID" in bad["error"]
        daemon.wait_until(lambda s: daemon_running(socket_path(tmp_path / "state")),
                          "the control socket")
        capsys.readouterr()
        rc = main(["enroll", "-c", str(path), "--machine", "pump", "--false-alarm", event_id])
        cli = subprocess.CompletedProcess([], rc, *capsys.readouterr())
        assert rc == 2 and "already marked normal" in cli.stderr, cli
    finally:
        assert daemon.stop() == 0
    audit = daemon.daemon.enrolment.manager.audit.read()
    assert [(a["event"], a["outcome"], a["who"][:5]) for a in audit] == [
        ("false-alarm", "done", "mqtt:"), ("false-alarm", "failed", "local")]


def test_cli_marks_an_alarm_normal_offline(tmp_path, new_sound, capsys):
    """Without a daemon, `enroll --false-alarm` writes the new version into the bank store
    for the daemon's next start, like an offline enrolment."""
    clip = write_flac(tmp_path / "x.flac", new_sound[:2 * RATE])
    path = write_config(tmp_path, small_config(tmp_path, [clip],
                                               learning={"seconds": 10, "scoring": "dads"}))
    prelearn(path)
    from edge_monitor.config.loader import load_config
    from edge_monitor.daemon import plan_machines

    state = Path(load_config(path).state_dir)
    learned = plan_machines(load_config(path)).machines[0].detector
    assert learned is not None
    (event_id,) = replay_alarms(learned, new_sound[:12 * RATE],
                                AlarmRecorder("pump", state, RATE, 3))
    capsys.readouterr()
    rc = main(["enroll", "-c", str(path), "--machine", "pump", "--false-alarm", event_id])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["event_id"] == event_id and "when it starts or reloads" in err
    served = BankStore(state, "pump").apply(plan_machines(load_config(path)).machines[0].detector)
    assert served.bank_version == json.loads(out)["new_versions"]["logmel-stats"]
    rc = main(["enroll", "-c", str(path), "--machine", "pump", "--false-alarm", event_id,
               str(clip)])
    assert rc == 2 and "give exactly one of" in capsys.readouterr().err
    rc = main(["enroll", "-c", str(path), "--machine", "pump", "--false-alarm", "42"])
    assert rc == 2 and "--false-alarm = '42'" in capsys.readouterr().err
