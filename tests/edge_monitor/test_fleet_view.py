"""`edge-monitor fleet` against a real broker holding two boxes' retained topics, built with
the same TopicTree messages the daemon publishes: one online box with a signed bundle and
two machines, one box offline; live (not retained) messages are not part of the view."""

from __future__ import annotations

import json
from datetime import timedelta

from edge_monitor import cli
from edge_monitor.mqtt.topics import BundleStatus, MachineState, TopicTree, utc_now


def publish(recorder, message):
    recorder.client.publish(message.topic, message.payload, message.qos,
                            message.retain).wait_for_publish(10)


def test_fleet_lists_boxes_and_machines_from_retained_topics(mosquitto, mqtt_recorder, capsys):
    recorder = mqtt_recorder(mosquitto, ["unused/#"])
    now = utc_now()
    a, b = TopicTree("box-a"), TopicTree("box-b")
    running = {"origin": "installed", "version": "887766d959b63a5d", "signer": "ops",
               "key_id": "0123456789abcdef"}
    for message in (
        a.availability_message(True),
        a.state_message("pump", MachineState("normal", 0.02, 0.05, now - timedelta(hours=1))),
        a.state_message("fan", MachineState("anomaly", 0.09, 0.05, now)),
        a.bundle_message(BundleStatus(running, {"step": "installed"}, now)),
        b.availability_message(False),
        b.state_message("press", MachineState("fault", None, None, now, "silence: input low")),
    ):
        publish(recorder, message)
    # A live telemetry message on a matching topic, not retained: not part of the view.
    recorder.client.publish(a.state("ghost"), b'{"status":"normal"}', 1, False)

    assert cli.main(["fleet", "--broker", mosquitto.host, "--port", str(mosquitto.port)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["BOX", "ONLINE", "BUNDLE", "SIGNER", "LAST", "SEEN", "MACHINE",
                                "STATE", "RATIO"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["box-a", "box-a", "box-b"]
    fan = rows[0]
    assert fan[1:5] == ["online", "887766d959b63a5d", "ops", "(0123456789abcdef)"]
    assert fan[-3:] == ["fan", "anomaly", "1.80"]
    assert rows[1][-3:] == ["pump", "normal", "0.40"]
    assert rows[2][1] == "OFFLINE" and rows[2][-3:] == ["press", "fault", "-"]

    assert cli.main(["fleet", "--broker", mosquitto.host, "--port", str(mosquitto.port),
                     "--json"]) == 0
    boxes = json.loads(capsys.readouterr().out)["boxes"]
    assert [box["device"] for box in boxes] == ["box-a", "box-b"]
    assert boxes[0]["bundle"] == running and boxes[0]["last_install"] == {"step": "installed"}
    assert [m["machine"] for m in boxes[0]["machines"]] == ["fan", "pump"]
    assert boxes[1]["online"] is False and boxes[1]["machines"][0]["reason"] == \
        "silence: input low"


def test_fleet_names_an_unreachable_broker(capsys):
    assert cli.main(["fleet", "--broker", "127.0.0.1", "--port", "1"]) == 1
    assert "cannot connect to the broker at 127.0.0.1:1" in capsys.readouterr().err
