"""Topic names and payload shapes: the contract subscribers rely on."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from edge_monitor.core.errors import ConfigError
from edge_monitor.mqtt.topics import (
    AlarmEvent,
    CommandReply,
    MachineState,
    ScoreSample,
    TopicTree,
    alarm_of,
    iso_utc,
)

T0 = datetime(2026, 11, 22, 21, 4, 5, 123456, tzinfo=timezone.utc)


def test_topic_tree():
    t = TopicTree("box1")
    assert t.availability == "edge-monitor/box1/availability"
    assert t.state("pump") == "edge-monitor/box1/machines/pump/state"
    assert t.events("pump") == "edge-monitor/box1/machines/pump/events"
    assert t.score("pump") == "edge-monitor/box1/machines/pump/score"
    assert t.command("enroll/start") == "edge-monitor/box1/cmd/enroll/start"
    assert t.command_result == "edge-monitor/box1/cmd/result"
    assert t.command_name("edge-monitor/box1/cmd/enroll/start") == "enroll/start"
    assert t.command_name("edge-monitor/box1/cmd/result") is None
    assert t.command_name("edge-monitor/box2/cmd/reload") is None
    assert TopicTree("b", prefix="plant/line-1").root == "plant/line-1/b"


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "with space", "x" * 65, "box\n"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(ConfigError, match=r"mqtt\.device_id"):
        TopicTree(bad)
    with pytest.raises(ConfigError, match="machine"):
        TopicTree("box1").state(bad)


def test_timestamps_are_iso_utc():
    assert iso_utc(T0) == "2026-11-22T21:04:05.123Z"
    assert iso_utc(T0.astimezone(timezone(timedelta(hours=2)))) == "2026-11-22T21:04:05.123Z"
    with pytest.raises(ValueError, match="time zone"):
        iso_utc(datetime(2026, 1, 1))


def test_state_payload_and_message():
    t = TopicTree("box1")
    fault = MachineState("fault", None, 1.0, T0, reason="microphone unplugged")
    message = t.state_message("pump", fault)
    assert (message.qos, message.retain) == (1, True)
    assert json.loads(message.payload) == {
        "status": "fault", "score": None, "threshold": 1.0, "ratio": None,
        "since": "2026-11-22T21:04:05.123Z", "reason": "microphone unplugged",
    }
    assert json.loads(MachineState("normal", float("nan"), 1.0, T0).to_json())["score"] is None
    with pytest.raises(ValueError, match="reason"):
        MachineState("fault", 0.1, 1.0, T0)
    with pytest.raises(ValueError, match="status"):
        MachineState("broken", 0.1, 1.0, T0)


@pytest.mark.parametrize(("score", "threshold", "expected"), [
    (0.0021663308143615723, 0.0030, 0.722), (3.0, 2.0, 1.5), (0.5, None, None),
    (None, 1.0, None), (float("inf"), 1.0, None), (0.5, 0.0, None), (0.5, float("nan"), None),
])
def test_ratio_is_score_over_threshold_or_null(score, threshold, expected):
    assert json.loads(MachineState("normal", score, threshold, T0).to_json())["ratio"] == expected
    if score is not None:
        assert json.loads(ScoreSample(score, threshold, T0).to_json())["ratio"] == expected


def test_event_payload_and_message():
    end = AlarmEvent("end", "e-1", "pump", T0, T0, 2.5, 1.0, "model-3", "bank-7",
                     clip_path="/clips/e-1.flac", ended_at=T0, message_id="m-1",
                     clip_url="http://box1:8080/clips/e-1.flac")
    message = TopicTree("box1").event_message(end)
    assert message.topic == "edge-monitor/box1/machines/pump/events"
    assert (message.qos, message.retain) == (1, False)
    assert json.loads(message.payload) == {
        "type": "end", "event_id": "e-1", "message_id": "m-1", "machine": "pump",
        "started_at": "2026-11-22T21:04:05.123Z", "updated_at": "2026-11-22T21:04:05.123Z",
        "ended_at": "2026-11-22T21:04:05.123Z", "peak_score": 2.5, "threshold": 1.0,
        "ratio": 2.5, "model_version": "model-3", "bank_version": "bank-7",
        "clip_path": "/clips/e-1.flac", "clip_url": "http://box1:8080/clips/e-1.flac",
        "reason": None,
    }
    assert AlarmEvent.from_json(message.payload).to_json().encode() == message.payload
    assert alarm_of(message) == ("end", "e-1")
    state = TopicTree("box1").state_message("pump", MachineState("normal", 0, 1, T0))
    assert alarm_of(state) is None
    restart = end.ended("restart", T0 + timedelta(seconds=5))
    assert (restart.type, restart.reason, restart.clip_path, restart.clip_url) == (
        "end", "restart", None, None)
    assert restart.message_id != end.message_id and restart.ended_at == restart.updated_at
    with pytest.raises(ValueError, match="reason"):
        AlarmEvent("new", "e-1", "pump", T0, T0, 2.5, 1.0, "m", "b", reason="restart")
    new = AlarmEvent("new", "e-1", "pump", T0, T0, 2.5, 1.0, "m", "b")
    assert new.message_id != AlarmEvent("new", "e-1", "pump", T0, T0, 2.5, 1.0, "m", "b").message_id
    with pytest.raises(ValueError, match="ended_at"):
        AlarmEvent("new", "e-1", "pump", T0, T0, 2.5, 1.0, "m", "b", ended_at=T0)
    with pytest.raises(ValueError, match="type"):
        AlarmEvent("started", "e-1", "pump", T0, T0, 2.5, 1.0, "m", "b")


def test_score_and_reply_messages():
    t = TopicTree("box1")
    score = t.score_message("pump", ScoreSample(0.5, 1.0, T0))
    assert (score.qos, score.retain) == (0, False)
    assert json.loads(score.payload) == {"score": 0.5, "threshold": 1.0, "ratio": 0.5,
                                         "at": "2026-11-22T21:04:05.123Z"}
    ok = json.loads(t.reply_message(CommandReply("r", "status", True, {"a": 1})).payload)
    assert ok == {"request_id": "r", "command": "status", "ok": True, "result": {"a": 1}}
    bad = json.loads(CommandReply(None, None, False, error="not JSON").to_json())
    assert bad == {"request_id": None, "command": None, "ok": False, "error": "not JSON"}


def test_discovery_removal_is_empty_and_retained():
    messages = TopicTree("box1").discovery_removal_messages(["fan"])
    assert {m.topic for m in messages} == {
        "homeassistant/binary_sensor/box1/fan_anomaly/config",
        "homeassistant/binary_sensor/box1/fan_fault/config",
        "homeassistant/sensor/box1/fan_status/config",
        "homeassistant/sensor/box1/fan_score/config",
        "homeassistant/sensor/box1/fan_ratio/config",
        "homeassistant/button/box1/fan_enrol_start/config",
        "homeassistant/button/box1/fan_enrol_commit/config",
        "homeassistant/button/box1/fan_enrol_rollback/config",
    }
    assert all(m.payload == b"" and m.retain for m in messages)
