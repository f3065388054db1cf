"""Commands over a real broker: replies on cmd/result, bad commands never reach a handler."""

from __future__ import annotations

import json
import time

import pytest

from edge_monitor.config.sections import MqttSection
from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.commands import MAX_PAYLOAD_BYTES

WAIT_S = 15.0
ROOT = "edge-monitor/box1"
RESULT = f"{ROOT}/cmd/result"


def start(broker, tmp_path, handled: list, **overrides) -> MqttClient:
    settings = MqttSection(host=broker.host, port=broker.port, ha_discovery=False, **overrides)
    client = MqttClient(settings, "box1", tmp_path / "j.sqlite3", ["pump"])
    for name in ("reload", "status", "enroll/start", "enroll/commit", "enroll/cancel",
                 "enroll/rollback"):
        client.commands.register(name, lambda command: handled.append(command) or {"done": 1})
    client.start()
    deadline = time.monotonic() + WAIT_S
    while not client.connected:
        if time.monotonic() > deadline:
            pytest.fail("client did not connect")
        time.sleep(0.02)
    return client


def replies(recorder, count: int) -> list[dict]:
    return [json.loads(m.payload) for m in recorder.wait_topic(RESULT, count)]


def test_bad_commands_get_error_replies_and_change_nothing(mosquitto, mqtt_recorder, tmp_path):
    handled: list = []
    client = start(mosquitto, tmp_path, handled)
    try:
        ops = mqtt_recorder(mosquitto, [RESULT])
        bad = [
            ("status", b"not json"),
            ("status", json.dumps({"request_id": "big", "x": "y" * MAX_PAYLOAD_BYTES})),
            ("self-destruct", json.dumps({"request_id": "unknown"})),
            ("reload", json.dumps({"machine": "pump"})),
            ("enroll/start", json.dumps({"request_id": "short", "machine": "pump", "seconds": 1})),
            ("enroll/commit", json.dumps({"request_id": "nomachine"})),
        ]
        for name, payload in bad:
            ops.publish(f"{ROOT}/cmd/{name}", payload)
        got = replies(ops, len(bad))
        assert all(r["ok"] is False and r["error"] for r in got)
        assert [r["request_id"] for r in got] == [None, None, "unknown", None, "short", "nomachine"]
        assert handled == []

        ops.publish(f"{ROOT}/cmd/enroll/start",
                    json.dumps({"request_id": "good", "machine": "pump", "seconds": 30}))
        last = replies(ops, len(bad) + 1)[-1]
        assert last == {"request_id": "good", "command": "enroll/start", "ok": True,
                        "result": {"done": 1}}
        assert [c.request_id for c in handled] == ["good"]
    finally:
        client.stop()


def test_commands_switched_off_in_config_are_refused(mosquitto, mqtt_recorder, tmp_path):
    handled: list = []
    client = start(mosquitto, tmp_path, handled, commands_enabled=False)
    try:
        ops = mqtt_recorder(mosquitto, [RESULT])
        ops.publish(f"{ROOT}/cmd/reload", json.dumps({"request_id": "r1"}))
        [reply] = replies(ops, 1)
        assert reply["request_id"] == "r1" and reply["ok"] is False
        assert "disabled" in reply["error"]
        assert handled == []
    finally:
        client.stop()


def test_deeply_nested_payload_is_refused_and_mqtt_keeps_working(
    mosquitto, mqtt_recorder, tmp_path
):
    handled: list = []
    client = start(mosquitto, tmp_path, handled)
    try:
        ops = mqtt_recorder(mosquitto, [RESULT])
        ops.publish(f"{ROOT}/cmd/status", "[" * 1500 + "]" * 1500)
        [refused] = replies(ops, 1)
        assert refused["ok"] is False and "nests 1500 levels" in refused["error"]
        assert handled == []

        ops.publish(f"{ROOT}/cmd/status", json.dumps({"request_id": "after"}))
        answered = replies(ops, 2)[-1]
        assert answered["request_id"] == "after" and answered["ok"] is True
        assert client.connected
    finally:
        client.stop()


def test_a_failing_callback_does_not_end_the_network_thread(
    mosquitto, mqtt_recorder, tmp_path, monkeypatch
):
    handled: list = []
    client = start(mosquitto, tmp_path, handled)
    try:
        ops = mqtt_recorder(mosquitto, [RESULT])
        command_name = client.topics.command_name
        calls: list[str] = []

        def fails_once(topic: str) -> str | None:
            calls.append(topic)
            if len(calls) == 1:
                raise RecursionError("maximum recursion depth exceeded")
            return command_name(topic)

        monkeypatch.setattr(client.topics, "command_name", fails_once)
        ops.publish(f"{ROOT}/cmd/status", json.dumps({"request_id": "lost"}))
        ops.publish(f"{ROOT}/cmd/status", json.dumps({"request_id": "kept"}))
        [answered] = replies(ops, 1)
        assert answered["request_id"] == "kept" and answered["ok"] is True
        assert "RecursionError" in client.stats().last_error
    finally:
        client.stop()
