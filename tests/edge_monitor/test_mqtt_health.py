"""The MQTT client's health check against a real mosquitto: a network thread killed by an
error no callback guard catches, and a broker that stops acknowledging (SIGSTOP), are each
noticed, logged and counted, and the client is restarted; delivery resumes."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading

import pytest
from test_mqtt_client import DEVICE, ROOT, alarm, message_ids, settings_for, wait_until

from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.health import network_thread_alive
from edge_monitor.mqtt.topics import new_id


def restart_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and "restarting it" in r.getMessage()]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_network_thread_is_restarted_and_delivery_resumes(
    mosquitto, mqtt_recorder, tmp_path, caplog
):
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/machines/+/events", f"{ROOT}/cmd/result"])
    client = MqttClient(settings_for(mosquitto, stall_timeout_s=1.0), DEVICE,
                        tmp_path / "j.sqlite3", ["pump"])
    submit, killed = client.commands.submit, threading.Event()

    def deadly(*args):  # SystemExit is no Exception: it gets past the callback guard
        if not killed.is_set():
            killed.set()
            raise SystemExit("killed by a test")
        return submit(*args)

    client.commands.submit = deadly
    client.start()
    try:
        wait_until(lambda: client.connected, "the connection")
        first = client._paho
        recorder.publish(f"{ROOT}/cmd/status", json.dumps({"request_id": "s1"}))
        wait_until(killed.is_set, "the command that kills the loop")
        wait_until(lambda: not network_thread_alive(first), "paho's loop to end")
        wait_until(lambda: client.stats().restarts == 1, "the health check's restart")
        assert "paho's network thread has ended" in restart_logs(caplog)[0]
        event = alarm("new", new_id())
        client.publish_event(event)
        recorder.wait_for(lambda ms: event.message_id in message_ids(recorder), "the event")
        recorder.publish(f"{ROOT}/cmd/status", json.dumps({"request_id": "s2"}))
        recorder.wait_for(lambda ms: any(json.loads(m.payload).get("request_id") == "s2"
                                         for m in ms if m.topic.endswith("cmd/result")),
                          "a command answered after the restart")
        assert client.stats().restarts == 1  # a healthy client is left alone
    finally:
        client.stop(flush_timeout_s=0)


def test_a_broker_that_stops_acknowledging_gets_a_fresh_connection(
    mosquitto, mqtt_recorder, tmp_path, caplog
):
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/machines/+/events"])
    client = MqttClient(settings_for(mosquitto, stall_timeout_s=1.0, keepalive_s=60), DEVICE,
                        tmp_path / "j.sqlite3", ["pump"])
    client.start()
    events = [alarm("new", new_id()), alarm("update", new_id())]
    try:
        wait_until(lambda: client.connected, "the connection")
        os.kill(mosquitto.pid, signal.SIGSTOP)  # TCP stays open; nothing is acknowledged
        try:
            client.publish_event(events[0])
            wait_until(lambda: client.stats().restarts >= 1, "the restart of the stuck client")
        finally:
            os.kill(mosquitto.pid, signal.SIGCONT)
        assert "no PUBACK" in restart_logs(caplog)[0]
        client.publish_event(events[1])
        recorder.wait_for(lambda ms: len(message_ids(recorder)) >= 2, "both events")
        assert message_ids(recorder) == [e.message_id for e in events]
        wait_until(lambda: client.stats().backlog == 0, "the journal to empty")
    finally:
        client.stop(flush_timeout_s=0)
