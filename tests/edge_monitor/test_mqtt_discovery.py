"""Home Assistant discovery: published on connect, again when Home Assistant comes online."""

from __future__ import annotations

import json

from edge_monitor.config.sections import MqttSection
from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.topics import MachineState, utc_now

CONFIG_TOPICS = {
    f"homeassistant/{component}/box1/{machine}_{suffix}/config"
    for machine in ("pump", "fan")
    for component, suffix in (("binary_sensor", "anomaly"), ("sensor", "score"))
}


def test_discovery_is_published_and_republished(mosquitto, mqtt_recorder, tmp_path):
    recorder = mqtt_recorder(mosquitto, ["homeassistant/+/+/+/config"])
    states = mqtt_recorder(mosquitto, ["edge-monitor/box1/machines/+/state"])
    settings = MqttSection(host=mosquitto.host, port=mosquitto.port, device_name="Line 1")
    client = MqttClient(settings, "box1", tmp_path / "j.sqlite3", ["pump", "fan"])
    client.start()
    client.publish_state("fan", MachineState("normal", 0.1, 1.0, utc_now()))
    try:
        first = recorder.wait_for(lambda ms: len(ms) >= 4, "4 discovery configs")
        assert {m.topic for m in first} == CONFIG_TOPICS
        late = mqtt_recorder(mosquitto, ["homeassistant/#"])  # retained: late subscribers see it
        assert all(m.retain for m in late.wait_for(lambda ms: len(ms) >= 4, "retained configs"))
        configs = {m.topic: json.loads(m.payload) for m in first}
        problem = configs["homeassistant/binary_sensor/box1/pump_anomaly/config"]
        assert problem["device_class"] == "problem"
        assert problem["state_topic"] == "edge-monitor/box1/machines/pump/state"
        assert problem["availability"][0]["topic"] == "edge-monitor/box1/availability"
        assert problem["device"]["name"] == "Line 1"
        score = configs["homeassistant/sensor/box1/fan_score/config"]
        assert score["state_topic"] == "edge-monitor/box1/machines/fan/score"
        assert score["unique_id"] == "box1_fan_score"

        recorder.publish("homeassistant/status", "online")  # Home Assistant restarted
        again = recorder.wait_for(lambda ms: len(ms) >= 8, "republished configs")
        assert {m.topic for m in again[4:]} == CONFIG_TOPICS

        states.wait_topic("edge-monitor/box1/machines/fan/state")
        client.set_machines(["pump"])  # fan removed by a reload: Home Assistant forgets it
        removed = recorder.wait_for(
            lambda ms: sum(m.payload == b"" for m in ms) >= 2, "empty configs for fan"
        )
        assert {m.topic for m in removed if m.payload == b""} == {
            t for t in CONFIG_TOPICS if "/fan_" in t
        }
        cleared = states.wait_topic("edge-monitor/box1/machines/fan/state", 2)
        assert cleared[-1].payload == b""  # the retained state of fan is deleted
    finally:
        client.stop()
