"""MqttClient against a real mosquitto: retained state, events, outages, restarts, Last Will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from disk_support import fill_disk, mounted_tmpfs

from edge_monitor.config.sections import MqttSection
from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.topics import AlarmEvent, MachineState, ScoreSample, new_id, utc_now

WAIT_S = 15.0
DEVICE = "box1"
ROOT = f"edge-monitor/{DEVICE}"


def settings_for(broker, **overrides) -> MqttSection:
    values = dict(
        host=broker.host, port=broker.port, reconnect_min_delay_s=0.2,
        reconnect_max_delay_s=0.5, ha_discovery=False,
    )
    values.update(overrides)
    return MqttSection(**values)


def alarm(kind: str, event_id: str, machine: str = "pump", peak: float = 1.5) -> AlarmEvent:
    start = utc_now()
    return AlarmEvent(
        type=kind, event_id=event_id, machine=machine, started_at=start,
        updated_at=start + timedelta(seconds=1), peak_score=peak, threshold=1.0,
        model_version="m-1", bank_version="b-1", clip_path=f"/var/lib/clips/{event_id}.flac",
        ended_at=start + timedelta(seconds=2) if kind == "end" else None,
    )


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def clients() -> Iterator[Callable[[MqttSection, Path], MqttClient]]:
    started: list[MqttClient] = []

    def make(settings: MqttSection, journal: Path, machines=("pump",)) -> MqttClient:
        client = MqttClient(settings, DEVICE, journal, machines)
        client.start()
        started.append(client)
        return client

    yield make
    for client in started:
        client.stop(flush_timeout_s=0)


def message_ids(recorder) -> list[str]:
    """Event message ids in first-arrival order (repeats dropped, as a consumer would)."""
    seen: list[str] = []
    for m in recorder.on(f"{ROOT}/machines/pump/events"):
        mid = json.loads(m.payload)["message_id"]
        if mid not in seen:
            seen.append(mid)
    return seen


def test_state_and_availability_are_retained(mosquitto, mqtt_recorder, clients, tmp_path):
    client = clients(settings_for(mosquitto), tmp_path / "j.sqlite3")
    client.publish_state("pump", MachineState("normal", 0.2, 1.0, utc_now()))
    wait_until(lambda: client.connected, "connection")
    assert client.flush(WAIT_S)

    late = mqtt_recorder(mosquitto, [f"{ROOT}/#"])  # subscribes after the publications
    [availability] = late.wait_topic(f"{ROOT}/availability")
    [state] = late.wait_topic(f"{ROOT}/machines/pump/state")
    assert (availability.payload, availability.retain) == (b"online", True)
    assert state.retain and state.qos == 1
    body = json.loads(state.payload)
    assert body["status"] == "normal" and body["score"] == 0.2 and body["threshold"] == 1.0
    assert body["since"].endswith("Z")


def test_state_is_sent_again_to_a_broker_that_lost_its_retained_messages(
    mosquitto, mqtt_recorder, clients, tmp_path
):
    client = clients(settings_for(mosquitto), tmp_path / "j.sqlite3", machines=("pump", "fan"))
    client.publish_state("pump", MachineState("normal", 0.2, 1.0, utc_now()))
    client.publish_state("pump", MachineState("anomaly", 2.5, 1.0, utc_now()))
    client.publish_state("fan", MachineState("normal", 0.1, 1.0, utc_now()))
    wait_until(lambda: client.connected, "connection")
    assert client.flush(WAIT_S)

    mosquitto.stop()  # persistence off: every retained message is gone with it
    wait_until(lambda: not client.connected, "the client to notice the outage")
    mosquitto.start()
    wait_until(lambda: client.connected, "the reconnection")
    late = mqtt_recorder(mosquitto, [f"{ROOT}/machines/+/state"])
    [pump] = late.wait_topic(f"{ROOT}/machines/pump/state")
    [fan] = late.wait_topic(f"{ROOT}/machines/fan/state")
    assert pump.retain and json.loads(pump.payload)["status"] == "anomaly"  # the newest
    assert fan.retain and json.loads(fan.payload)["status"] == "normal"


def test_events_arrive_with_ids_qos1_not_retained(mosquitto, mqtt_recorder, clients, tmp_path):
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/machines/+/events", f"{ROOT}/machines/+/score"])
    client = clients(settings_for(mosquitto), tmp_path / "j.sqlite3")
    event_id = new_id()
    for kind in ("new", "update", "end"):
        client.publish_event(alarm(kind, event_id))
    wait_until(lambda: client.connected, "connection")
    client.publish_score("pump", ScoreSample(0.7, 1.0, utc_now()))

    events = recorder.wait_topic(f"{ROOT}/machines/pump/events", 3)
    bodies = [json.loads(m.payload) for m in events]
    assert [b["type"] for b in bodies] == ["new", "update", "end"]
    assert {b["event_id"] for b in bodies} == {event_id}
    assert len({b["message_id"] for b in bodies}) == 3
    assert all(m.qos == 1 and not m.retain for m in events)
    assert bodies[2]["ended_at"] is not None and bodies[0]["ended_at"] is None
    [score] = recorder.wait_topic(f"{ROOT}/machines/pump/score")
    assert json.loads(score.payload)["score"] == 0.7 and score.qos == 0
    assert client.flush(WAIT_S)
    assert client.stats().backlog == 0


def test_broker_outage_loses_no_event_and_keeps_order(
    mosquitto_factory, mqtt_recorder, clients, tmp_path
):
    broker = mosquitto_factory(persistence=True)
    recorder = mqtt_recorder(broker, [f"{ROOT}/machines/+/events"], persistent=True)
    client = clients(settings_for(broker), tmp_path / "j.sqlite3")
    sent = [alarm("new", new_id()), alarm("end", new_id())]
    for event in sent:
        client.publish_event(event)
    recorder.wait_for(lambda ms: len(ms) >= 2, "events before the outage")

    broker.stop()
    wait_until(lambda: not client.connected, "the client to notice the outage")
    during = [alarm(kind, new_id()) for kind in ("new", "update", "update", "end")]
    for event in during:
        client.publish_event(event)
    wait_until(lambda: client.stats().backlog == len(during), "the events to reach the journal")

    broker.start()
    expected = [e.message_id for e in sent + during]
    recorder.wait_for(lambda ms: len(message_ids(recorder)) >= len(expected), "every event")
    assert message_ids(recorder) == expected
    assert client.flush(WAIT_S)


def test_events_survive_a_client_restart(mosquitto_factory, mqtt_recorder, clients, tmp_path):
    broker = mosquitto_factory(persistence=True)
    recorder = mqtt_recorder(broker, [f"{ROOT}/machines/+/events"], persistent=True)
    journal = tmp_path / "j.sqlite3"
    broker.stop()

    first = MqttClient(settings_for(broker), DEVICE, journal, ["pump"])
    first.start()
    sent = [alarm(kind, new_id()) for kind in ("new", "update", "end")]
    for event in sent:
        first.publish_event(event)
    first.stop(flush_timeout_s=0)  # the broker is away: all three stay in the journal

    broker.start()
    clients(settings_for(broker), journal)  # a new process would do the same
    expected = [e.message_id for e in sent]
    recorder.wait_for(lambda ms: len(message_ids(recorder)) >= 3, "the journaled events")
    assert message_ids(recorder) == expected


CHILD = """
import sys, time
from pathlib import Path
from datetime import timedelta
from edge_monitor.config.sections import MqttSection
from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.topics import AlarmEvent, MachineState, utc_now

port, journal, count = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
client = MqttClient(MqttSection(host="127.0.0.1", port=port, keepalive_s=5, ha_discovery=False),
                    "box1", journal, ["pump"])
client.start()
client.publish_state("pump", MachineState("normal", 0.1, 1.0, utc_now()))
for i in range(count):
    now = utc_now()
    client.publish_event(AlarmEvent("new", f"child-{i}", "pump", now, now, 2.0, 1.0, "m", "b",
                                    message_id=f"child-msg-{i}"))
# count == 0: wait for the connection; else the broker is away: wait for the journal.
while not (client.connected if count == 0 else client.stats().backlog >= count + 1):
    time.sleep(0.01)
print("ready", flush=True)
time.sleep(600)
"""


def spawn_child(port: int, journal: Path, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(port), str(journal), str(count)],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def test_sigkill_of_the_daemon_gives_offline_by_last_will(mosquitto, mqtt_recorder, tmp_path):
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/availability"])
    child = spawn_child(mosquitto.port, tmp_path / "j.sqlite3", 0)
    try:
        recorder.wait_for(lambda ms: any(m.payload == b"online" for m in ms), "online")
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT_S)
        messages = recorder.wait_for(
            lambda ms: bool(ms) and ms[-1].payload == b"offline", "the Last Will"
        )
    finally:
        child.kill()
        child.wait(WAIT_S)
    assert [m.payload for m in messages][-2:] == [b"online", b"offline"]


def test_events_journaled_before_sigkill_are_delivered_after_restart(
    mosquitto_factory, mqtt_recorder, clients, tmp_path
):
    broker = mosquitto_factory(persistence=True)
    recorder = mqtt_recorder(broker, [f"{ROOT}/machines/+/events"], persistent=True)
    journal = tmp_path / "j.sqlite3"
    broker.stop()
    child = spawn_child(broker.port, journal, 5)  # "ready" once all 5 are in the journal
    child.send_signal(signal.SIGKILL)
    child.wait(WAIT_S)

    broker.start()
    clients(settings_for(broker), journal)
    expected = [f"child-msg-{i}" for i in range(5)]
    recorder.wait_for(lambda ms: len(message_ids(recorder)) >= 5, "the journaled events")
    assert message_ids(recorder) == expected


KILLED_AT_ONCE = """
import os, signal, sys
from pathlib import Path
from edge_monitor.config.sections import MqttSection
from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.topics import AlarmEvent, utc_now

port, journal = int(sys.argv[1]), Path(sys.argv[2])
client = MqttClient(MqttSection(host="127.0.0.1", port=port, ha_discovery=False), "box1",
                    journal, ["pump"])
client.start()
now = utc_now()
for kind in ("new", "update"):
    client.publish_event(AlarmEvent(kind, "open-1", "pump", now, now, 2.0, 1.0, "m", "b",
                                    message_id=f"{kind}-msg"))
os.kill(os.getpid(), signal.SIGKILL)  # the instant publish_event returned
"""


def test_event_is_durable_when_publish_returns_and_an_open_alarm_ends_after_restart(
    mosquitto_factory, mqtt_recorder, clients, tmp_path
):
    broker = mosquitto_factory(persistence=True)
    recorder = mqtt_recorder(broker, [f"{ROOT}/machines/+/events"], persistent=True)
    journal = tmp_path / "j.sqlite3"
    broker.stop()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.run([sys.executable, "-c", KILLED_AT_ONCE, str(broker.port), str(journal)],
                           env=env, timeout=WAIT_S)
    assert child.returncode == -signal.SIGKILL

    broker.start()
    client = clients(settings_for(broker), journal)
    [end] = client.end_open_alarms()
    assert client.end_open_alarms() == []  # ended once, not at every start
    recorder.wait_for(lambda ms: len(message_ids(recorder)) >= 3, "the alarm and its end")
    assert message_ids(recorder) == ["new-msg", "update-msg", end.message_id]
    last = json.loads(recorder.on(f"{ROOT}/machines/pump/events")[-1].payload)
    assert (last["type"], last["event_id"], last["reason"]) == ("end", "open-1", "restart")
    assert last["peak_score"] == 2.0 and last["ended_at"] == last["updated_at"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs for the journal: a real full disk (needs root with mount rights)."""
    with mounted_tmpfs(tmp_path / "small", "size=512k") as mount_point:
        yield mount_point


def test_full_disk_publishes_from_memory_then_journals_again(
    small_disk, mosquitto, mqtt_recorder, clients, caplog
):
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/machines/+/events"])
    client = clients(settings_for(mosquitto), small_disk / "j.sqlite3")
    wait_until(lambda: client.connected, "the connection")
    fill_disk(small_disk)
    on_full = [alarm("new", new_id()) for _ in range(3)]
    for event in on_full:
        client.publish_event(event)
    recorder.wait_for(lambda ms: len(message_ids(recorder)) >= 3, "the events sent from memory")
    failures = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert failures and "free disk space" in failures[0]
    assert "journal" in (client.stats().last_error or "")
    (small_disk / "filler").unlink()
    freed = alarm("end", new_id())
    client.publish_event(freed)
    recorder.wait_for(lambda ms: freed.message_id in message_ids(recorder), "the next event")
    assert message_ids(recorder) == [e.message_id for e in [*on_full, freed]]
    wait_until(lambda: client.stats().backlog == 0, "the journal to empty")


def test_graceful_stop_says_offline(mosquitto, mqtt_recorder, tmp_path):
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/availability"])
    client = MqttClient(settings_for(mosquitto), DEVICE, tmp_path / "j.sqlite3", ["pump"])
    client.start()
    recorder.wait_for(lambda ms: any(m.payload == b"online" for m in ms), "online")
    client.stop()
    recorder.wait_for(lambda ms: bool(ms) and ms[-1].payload == b"offline", "offline on stop")
