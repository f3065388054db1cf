"""Home Assistant discovery: published on connect, again when Home Assistant comes online."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge_monitor.config.sections import MqttSection
from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.commands import parse_command
from edge_monitor.mqtt.topics import (
    COMMAND_NAMES,
    HA_BUTTONS,
    STATUSES,
    MachineState,
    TopicTree,
    utc_now,
)

ENTITIES = (("sensor", "status"), ("binary_sensor", "anomaly"), ("binary_sensor", "fault"),
            ("sensor", "score"), ("sensor", "ratio"), ("button", "enrol_start"),
            ("button", "enrol_commit"), ("button", "enrol_rollback"))
CONFIG_TOPICS = {
    f"homeassistant/{component}/box1/{machine}_{suffix}/config"
    for machine in ("pump", "fan") for component, suffix in ENTITIES
}
N = len(CONFIG_TOPICS)
HA_KEYS = json.loads((Path(__file__).parent / "ha_mqtt_discovery_keys.json").read_text())


def test_every_discovery_key_is_one_home_assistant_knows():
    """HA drops (older releases: refuses) unknown keys, so a typo would silently lose a
    setting; checked against the committed list from HA's docs."""
    messages = TopicTree("box1").discovery_messages(["pump", "fan"], "Line 1", COMMAND_NAMES)
    assert {m.topic for m in messages} == CONFIG_TOPICS
    unique_ids = set()
    for message in messages:
        component = message.topic.split("/")[1]
        config = json.loads(message.payload)
        unknown = set(config) - set(HA_KEYS["entity"]) - set(HA_KEYS[component])
        assert not unknown, f"{message.topic}: keys HA does not know: {unknown}"
        assert set(HA_KEYS["required"][component]) <= set(config), message.topic
        for entry in config["availability"]:
            assert set(entry) <= set(HA_KEYS["availability"]) and "topic" in entry
        assert set(config["device"]) <= set(HA_KEYS["device"])
        assert set(config["origin"]) <= set(HA_KEYS["origin"]) and "name" in config["origin"]
        if "device_class" in config:
            assert config["device_class"] in HA_KEYS["device_class"][component], message.topic
        if "entity_category" in config:
            assert config["entity_category"] in HA_KEYS["entity_category"]
        if "state_class" in config:
            assert config["state_class"] in HA_KEYS["state_class"]
        if config.get("device_class") == "enum":  # HA's rules for an enum sensor
            assert config["options"] and "state_class" not in config
            assert "unit_of_measurement" not in config
        unique_ids.add(config["unique_id"])
    assert len(unique_ids) == len(messages)


def test_status_sensor_lists_every_status_and_fault_has_its_own_problem_sensor():
    configs = {m.topic.split("/")[3]: json.loads(m.payload)
               for m in TopicTree("box1").discovery_messages(["pump"]) if m.payload}
    assert configs["pump_status"]["options"] == list(STATUSES)
    assert set(STATUSES) == {"normal", "anomaly", "fault", "learning", "enrolling"}
    assert "'fault'" in configs["pump_fault"]["value_template"]
    assert "'anomaly'" in configs["pump_anomaly"]["value_template"]
    assert configs["pump_ratio"]["value_template"] == "{{ value_json.ratio }}"
    state = "edge-monitor/box1/machines/pump/state"
    assert {configs[k]["state_topic"] for k in ("pump_status", "pump_anomaly", "pump_fault")} == {
        state}


def test_discovery_is_published_and_republished(mosquitto, mqtt_recorder, tmp_path):
    recorder = mqtt_recorder(mosquitto, ["homeassistant/+/+/+/config"])
    states = mqtt_recorder(mosquitto, ["edge-monitor/box1/machines/+/state"])
    settings = MqttSection(host=mosquitto.host, port=mosquitto.port, device_name="Line 1")
    client = MqttClient(settings, "box1", tmp_path / "j.sqlite3", ["pump", "fan"])
    client.start()
    client.publish_state("fan", MachineState("normal", 0.1, 1.0, utc_now()))
    try:
        first = recorder.wait_for(lambda ms: len(ms) >= N, f"{N} discovery configs")
        assert {m.topic for m in first} == CONFIG_TOPICS
        late = mqtt_recorder(mosquitto, ["homeassistant/#"])  # retained: late subscribers see it
        assert all(m.retain for m in late.wait_for(lambda ms: len(ms) >= N, "retained configs"))
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
        again = recorder.wait_for(lambda ms: len(ms) >= 2 * N, "republished configs")
        assert {m.topic for m in again[N:]} == CONFIG_TOPICS

        states.wait_topic("edge-monitor/box1/machines/fan/state")
        client.set_machines(["pump"])  # fan removed by a reload: Home Assistant forgets it
        removed = recorder.wait_for(
            lambda ms: sum(m.payload == b"" for m in ms) >= N // 2, "empty configs for fan"
        )
        assert {m.topic for m in removed if m.payload == b""} == {
            t for t in CONFIG_TOPICS if "/fan_" in t
        }
        cleared = states.wait_topic("edge-monitor/box1/machines/fan/state", 2)
        assert cleared[-1].payload == b""  # the retained state of fan is deleted
    finally:
        client.stop()


def test_buttons_only_for_the_commands_the_box_accepts():
    """An enrolment button is announced only while its command is enabled and allowed; it
    publishes a complete command that the box's own validator accepts. Otherwise its config
    is empty, which removes a button announced before."""
    tree = TopicTree("box1")
    buttons = {f"pump_{suffix}": command for command, suffix, _, _ in HA_BUTTONS}

    def announced(commands) -> dict[str, bytes]:
        return {m.topic.split("/")[3]: m.payload for m in
                tree.discovery_messages(["pump"], commands=commands)
                if m.topic.split("/")[1] == "button"}

    assert set(announced(COMMAND_NAMES)) == set(buttons)
    assert all(payload == b"" for payload in announced(()).values())
    only = announced(["enroll/rollback"])
    assert only["pump_enrol_start"] == b"" and only["pump_enrol_rollback"] != b""
    for object_id, payload in announced(COMMAND_NAMES).items():
        config = json.loads(payload)
        command = tree.command_name(config["command_topic"])
        assert command == buttons[object_id]
        parsed = parse_command(command, config["payload_press"].encode())
        assert parsed.args["machine"] == "pump"


def test_pressing_a_button_reaches_the_command_handler(mosquitto, mqtt_recorder, tmp_path):
    """What Home Assistant publishes on a press (the config's payload_press on its
    command_topic) runs the command, over a real broker; with commands off, no buttons."""
    recorder = mqtt_recorder(mosquitto, ["homeassistant/button/#"])
    settings = MqttSection(host=mosquitto.host, port=mosquitto.port,
                           commands_allowed=["enroll/rollback", "status"])
    client = MqttClient(settings, "box1", tmp_path / "j.sqlite3", ["pump"])
    pressed = []
    client.commands.register("enroll/rollback", lambda c: pressed.append(c.args) or {"ok": 1})
    client.start()
    try:
        configs = recorder.wait_for(lambda ms: len(ms) >= 3, "button configs")
        live = [json.loads(m.payload) for m in configs if m.payload]
        assert [c["unique_id"] for c in live] == ["box1_pump_enrol_rollback"]
        recorder.publish(live[0]["command_topic"], live[0]["payload_press"])
        deadline = time.monotonic() + 10
        while not pressed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pressed == [{"machine": "pump"}]
    finally:
        client.stop()
    off = MqttSection(host=mosquitto.host, port=mosquitto.port, commands_enabled=False)
    quiet = mqtt_recorder(mosquitto, ["homeassistant/button/#"])
    client = MqttClient(off, "box1", tmp_path / "j2.sqlite3", ["pump"])
    client.start()
    try:
        removed = quiet.wait_for(lambda ms: sum(not m.retain for m in ms) >= 3, "removals")
        assert all(m.payload == b"" for m in removed if not m.retain)
    finally:
        client.stop()
