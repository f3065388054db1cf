"""The daemon end to end on the replay source, as fast as it can go, against a real broker.

Audio: a synthetic machine (edge_monitor.demo.synth) learned as normal, then silence, clipping and
a bearing fault. Expected: learning -> normal -> fault (silence) -> normal -> fault
(clipping) -> normal -> anomaly -> normal, one alarm with new/end sharing an event id and a
saved FLAC clip, retained state and `offline` availability at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import shutil
import socket
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf
from daemon_support import (
    RATE,
    DaemonThread,
    dedupe,
    small_config,
    status_of,
    synth,
    write_config,
    write_flac,
)

from edge_monitor.config.loader import load_config
from edge_monitor.daemon import plan_machines
from edge_monitor.demo.synth import FaultSegment
from edge_monitor.pipeline.service import Notifier

STATUS_LINE = re.compile(r"^machine pump: (learning|normal|anomaly|fault|enrolling)( \((.*)\))?$")


def scenario(tmp_path: Path) -> list[Path]:
    """One synthetic machine: a_learn.flac its first 10 s; b_test.flac the next 30 s with
    silence (3-6 s), clipping (9-11 s) and a bearing fault (21-25 s)."""
    audio = synth(40.0, (FaultSegment("bearing", 31.0, 35.0),), seed=7)
    learn = write_flac(tmp_path / "a_learn.flac", audio[: 10 * RATE])
    test = audio[10 * RATE:].copy()
    test[3 * RATE:6 * RATE] = 0.0
    test[9 * RATE:11 * RATE] = np.clip(test[9 * RATE:11 * RATE] * 60.0, -1.0, 1.0)
    return [learn, write_flac(tmp_path / "b_test.flac", test)]


def logged_statuses(caplog) -> list[tuple[str, str | None]]:
    """Every status change of `pump`, from the daemon's log (MQTT keeps only the latest
    retained state in its journal, so a fast replay may skip states on the wire)."""
    found = []
    for record in caplog.records:
        match = STATUS_LINE.match(record.getMessage())
        if record.name == "edge_monitor.pipeline.reporting" and match:
            found.append((match.group(1), match.group(3)))
    return found


def test_replay_fast_gives_the_expected_states_events_and_clip(
    tmp_path, mosquitto, mqtt_recorder, caplog
):
    caplog.set_level(logging.INFO, logger="edge_monitor.pipeline.reporting")
    files = scenario(tmp_path)
    config = small_config(tmp_path, files, mqtt={"enabled": True, "host": mosquitto.host,
                                                 "port": mosquitto.port})
    recorder = mqtt_recorder(mosquitto, ["edge-monitor/#"])
    daemon = DaemonThread(write_config(tmp_path, config))
    assert daemon.wait(60) == 0
    root = "edge-monitor/test-box"
    logged = logged_statuses(caplog)
    statuses = dedupe([status for status, _ in logged])
    assert statuses == ["learning", "normal", "fault", "normal", "fault", "normal", "anomaly",
                        "normal"], statuses
    reasons = [reason for status, reason in logged if status == "fault"]
    assert reasons[0].startswith("silence") and reasons[-1].startswith("clipping")
    recorder.wait_topic(f"{root}/availability", 2)
    states = [json.loads(m.payload) for m in recorder.on(f"{root}/machines/pump/state")]
    assert states[0]["status"] == "learning" and states[-1]["status"] == "normal"
    assert [s["status"] for s in states].count("learning") == 1  # published once
    assert {"anomaly", "normal"} <= {s["status"] for s in states}
    # The threshold is known from the end of learning, before the first window is scored.
    assert all(s["threshold"] is not None for s in states if s["status"] != "learning")
    assert all(s["ratio"] == round(s["score"] / s["threshold"], 3)
               for s in states if s["score"] is not None)
    late = mqtt_recorder(mosquitto, [f"{root}/machines/pump/state", f"{root}/availability"])
    retained = late.wait_topic(f"{root}/machines/pump/state")[0]
    assert retained.retain and json.loads(retained.payload)["status"] == "normal"
    assert late.wait_topic(f"{root}/availability")[0].payload == b"offline"
    events = [json.loads(m.payload) for m in recorder.on(f"{root}/machines/pump/events")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "new" and kinds[-1] == "end" and set(kinds[1:-1]) <= {"update"}
    assert len({e["event_id"] for e in events}) == 1
    assert len({e["message_id"] for e in events}) == len(events)
    new = events[0]
    assert new["model_version"] == "builtin-logmel-stats" and new["bank_version"]
    assert new["peak_score"] > new["threshold"]
    assert new["ratio"] == round(new["peak_score"] / new["threshold"], 3) > 1.0
    assert str(uuid.UUID(new["event_id"])) == new["event_id"]  # dashed, like message_id
    clip = Path(new["clip_path"])
    assert clip.is_file() and clip.parent == tmp_path / "state" / "clips"
    assert sf.info(str(clip)).samplerate == RATE and sf.info(str(clip)).duration == 1.0
    assert recorder.on(f"{root}/availability")[-1].payload == b"offline"
    scores = [json.loads(m.payload) for m in recorder.on(f"{root}/machines/pump/score")]
    snap = daemon.daemon.processor.snapshot()
    # One score per 10 s of audio (default score_interval_s), plus one at each status
    # change, not one per window: 30 s judged, so far fewer than the scored windows.
    assert 0 < len(scores) <= 30 / 10 + len(logged) + 2 < snap["scored_windows"] / 3
    at_times = {s["at"] for s in scores}
    assert all(s["since"] in at_times for s in states if s["status"] == "anomaly")
    # Nothing dropped or lost; one boundary between the two recordings.
    assert snap["dropped_chunks"] == 0 and snap["windower_gaps"] == 0
    assert snap["file_boundaries"] == 1
    # The learned bank is on disk: the next start skips learning.
    plan = plan_machines(load_config(write_config(tmp_path, config)))
    assert plan.machines[0].learner is None and plan.machines[0].detector is not None
    assert plan.machines[0].detector.bank_version == new["bank_version"]


def test_watchdog_ready_status_and_stopping_reach_the_notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    sock.bind(address)
    sock.settimeout(10)
    audio = write_flac(tmp_path / "a.flac", synth(6.0))
    config = small_config(tmp_path, [audio], source={"replay": {"paths": [str(audio)],
                                                                "realtime": True, "loop": True}})
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    daemon = DaemonThread(write_config(tmp_path, config), notifier)
    received: list[str] = []
    try:
        while sum(m == "WATCHDOG=1" for m in received) < 5:
            received.append(sock.recv(4096).decode())
    finally:
        assert daemon.stop() == 0
    sock.settimeout(1)
    with contextlib.suppress(TimeoutError):  # drain what came until the socket goes quiet
        while True:
            received.append(sock.recv(4096).decode())
    sock.close()
    ready = [m for m in received if m.startswith("READY=1")]
    assert ready and "STATUS=pump: learning" in ready[0]
    # READY=1 carries the first status line: none before it, with a state not yet settled.
    assert received[0] == ready[0]
    first_ping = received.index("WATCHDOG=1")
    assert received.index(ready[0]) < first_ping
    assert "STOPPING=1" in received


def test_disk_error_is_a_fault_that_clears_by_itself(tmp_path):
    blocker = tmp_path / "blocked"
    audio = synth(20.0, (FaultSegment("rubbing", 13.0, 20.0),), seed=7)
    learn = write_flac(tmp_path / "a.flac", audio[: 12 * RATE])
    faulty = write_flac(tmp_path / "b.flac", audio[12 * RATE:])
    config = small_config(tmp_path, [learn, faulty],
                          source={"replay": {"paths": [str(learn), str(faulty)], "loop": True,
                                             "realtime": False}},
                          alarm_audio={"dir": str(blocker / "clips")})
    daemon = DaemonThread(write_config(tmp_path, config))
    try:
        # A clip directory that is a file is refused at start (`check` and `run` alike); one
        # that breaks while the daemon runs is a fault that clears when it is repaired.
        daemon.wait_until(lambda s: s["windows"] > 0, "a first window")
        shutil.rmtree(blocker)
        blocker.write_text("a file where the clip directory should be\n")
        snap = daemon.wait_until(
            lambda s: (s["machines"]["pump"]["reason"] or "").startswith("disk error"),
            "a disk fault")
        assert status_of(snap) == "fault" and snap["clip_errors"] >= 1
        blocker.unlink()
        daemon.wait_until(lambda s: snap["windows"] < s["windows"] and status_of(s) != "fault"
                          and s["clip_errors"] == snap["clip_errors"], "recovery from the fault")
        daemon.wait_until(lambda s: any((blocker / "clips").glob("*.flac")), "a saved clip")
    finally:
        assert daemon.stop() == 0


def test_fast_replay_of_separate_files_keeps_audio_time(tmp_path, mosquitto, mqtt_recorder,
                                                       caplog):
    """Alarm and score times follow the recordings from file to file (docs/configuration.md):
    they never jump back to the wall clock at a new file, an alarm lasts as long as the fault
    it heard, and file boundaries are counted as such, not as lost audio."""
    caplog.set_level(logging.INFO, logger="edge_monitor.pipeline.reporting")
    audio = synth(36.0, (FaultSegment("bearing", 23.0, 29.0),), seed=7)
    cuts = [0, 12, 18, 30, 36]  # learn 12 s, normal 6 s, fault at 5-11 s of 12 s, normal 6 s
    files = [write_flac(tmp_path / f"{chr(97 + i)}.flac", audio[a * RATE:b * RATE])
             for i, (a, b) in enumerate(itertools.pairwise(cuts))]
    config = small_config(tmp_path, files, mqtt={"enabled": True, "host": mosquitto.host,
                                                 "port": mosquitto.port,
                                                 "score_interval_s": 0})
    recorder = mqtt_recorder(mosquitto, ["edge-monitor/#"])
    daemon = DaemonThread(write_config(tmp_path, config))
    assert daemon.wait(60) == 0
    root = "edge-monitor/test-box"
    recorder.wait_topic(f"{root}/availability", 2)
    scores = [json.loads(m.payload) for m in recorder.on(f"{root}/machines/pump/score")]
    times = [datetime.fromisoformat(s["at"]) for s in scores]
    assert all(b > a for a, b in itertools.pairwise(times)), "audio time went back"
    # Learning takes the first 10 s; the scores of the 26 s after it span about 25 s.
    assert 24.0 < (times[-1] - times[0]).total_seconds() < 26.0
    events = [json.loads(m.payload) for m in recorder.on(f"{root}/machines/pump/events")]
    end = next(e for e in events if e["type"] == "end")
    lasted = (datetime.fromisoformat(end["ended_at"])
              - datetime.fromisoformat(end["started_at"])).total_seconds()
    assert 3.0 < lasted < 8.0, lasted  # the 6 s fault, give or take the debounce
    snap = daemon.daemon.processor.snapshot()
    assert snap["file_boundaries"] == 3 and snap["windower_gaps"] == 0
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("final stats")]
    assert "0 gaps" in final[-1] and "3 file boundaries (replay, not lost audio)" in final[-1]
