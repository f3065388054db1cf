"""The MQTT enrolment commands against a running daemon and a real mosquitto: start, the
retained state `enrolling`, a refused second start, commit, rollback, and error replies."""

from __future__ import annotations

import json
import time

from daemon_support import DaemonThread, mqtt_command
from enroll_support import GATE, looping_replay

ROOT = "edge-monitor/test-box"
RESULT = f"{ROOT}/cmd/result"
STATE = f"{ROOT}/machines/pump/state"
WAIT_S = 30.0


def command(recorder, name: str, request_id: str, **args) -> dict:
    return mqtt_command(recorder, ROOT, name, request_id, **args)


def statuses(recorder) -> list[str]:
    return [json.loads(m.payload)["status"] for m in recorder.on(STATE)]


def test_enrolment_over_mqtt(tmp_path, mosquitto, mqtt_recorder):
    path, _ = looping_replay(
        tmp_path,
        # 5 s recordings keep the test short; the default gate asks for 20 s.
        enrolment={"min_seconds": GATE.min_seconds, "min_windows": GATE.min_windows,
                   "keep_versions": 3},
        mqtt={"enabled": True, "host": mosquitto.host, "port": mosquitto.port},
    )
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/#"])
    daemon = DaemonThread(path)
    try:
        snap = daemon.wait_until(lambda s: s["machines"]["pump"]["bank_version"] is not None,
                                 "a detector")
        before = snap["machines"]["pump"]["bank_version"]
        manager = daemon.daemon.enrolment.manager
        assert manager.gate == GATE and manager.keep == 3
        started = command(recorder, "enroll/start", "e1", machine="pump", seconds=5)
        assert started["ok"] and started["result"]["state"] == "recording", started
        recorder.wait_for(lambda ms: "enrolling" in statuses(recorder), "state enrolling")
        recording = command(recorder, "enroll/status", "s1")
        assert recording["ok"] and recording["result"]["active"]["machine"] == "pump"
        assert recording["result"]["active"]["state"] == "recording"

        second = command(recorder, "enroll/start", "e2", machine="pump", seconds=5)
        assert not second["ok"] and "refused" in second["error"]
        early = command(recorder, "enroll/commit", "e3", machine="pump")
        assert not early["ok"] and "still recording" in early["error"]

        deadline = time.monotonic() + WAIT_S
        while True:
            committed = command(recorder, "enroll/commit", f"c{time.monotonic()}", machine="pump")
            if committed["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert committed["ok"], committed
        new = committed["result"]["new_versions"]["logmel-stats"]
        assert committed["result"]["old_versions"] == {"logmel-stats": before}
        daemon.wait_until(lambda s: s["machines"]["pump"]["bank_version"] == new, "new bank")
        done = command(recorder, "enroll/status", "s2")["result"]
        assert done["active"] is None and done["last"]["state"] == "done"
        assert done["last"]["new_versions"] == {"logmel-stats": new}
        recorder.wait_for(lambda ms: statuses(recorder)[-1] != "enrolling", "enrolling ends")

        back = command(recorder, "enroll/rollback", "r1", machine="pump")
        assert back["ok"] and back["result"]["new_versions"] == {"logmel-stats": before}
        daemon.wait_until(lambda s: s["machines"]["pump"]["bank_version"] == before, "rollback")
        nothing = command(recorder, "enroll/cancel", "x1", machine="pump")
        assert not nothing["ok"] and "no enrolment of pump is running" in nothing["error"]
        unknown = command(recorder, "enroll/start", "x2", machine="fan", seconds=5)
        assert not unknown["ok"] and "unknown machine" in unknown["error"]
    finally:
        assert daemon.stop() == 0
    audit = daemon.daemon.enrolment.manager.audit.read()
    assert [a["event"] for a in audit] == ["enrol-start", "enrolment", "rollback"]
    assert audit[1]["who"] == "mqtt:e1" and audit[1]["closed_by"].startswith("mqtt:c")
