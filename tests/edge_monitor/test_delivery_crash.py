"""Delivery across a daemon SIGKILL (issue 12): the real daemon process, a real mosquitto
with persistence that is away while the alarm happens, and a subscriber with a persistent
session. An `update` logged the instant before the SIGKILL is delivered after the restart,
and the alarm the crash left open gets its `end` with `reason: restart`."""

from __future__ import annotations

import json
import re
import signal

from daemon_support import RATE, learn_first, small_config, synth, write_config, write_flac
from test_daemon_signals import start, wait_log

from edge_monitor.demo.synth import FaultSegment

ROOT = "edge-monitor/test-box"
UPDATE = re.compile(r"alarm update (\S+) message (\S+)")


def ramp(seconds: float, start_s: float) -> tuple[FaultSegment, ...]:
    """A bearing fault that grows every second, so the alarm's peak rises (an `update`)."""
    steps = int(seconds - start_s)
    return tuple(FaultSegment("bearing", start_s + i, start_s + i + 1, (i + 1) / steps)
                 for i in range(steps))


def test_update_logged_before_sigkill_is_delivered_and_the_alarm_ends_at_restart(
    tmp_path, mosquitto_factory, mqtt_recorder
):
    broker = mosquitto_factory(persistence=True)
    recorder = mqtt_recorder(broker, [f"{ROOT}/machines/+/events"], persistent=True)
    audio = synth(40.0, ramp(40.0, 22.0), seed=7)
    learn_first(tmp_path, write_flac(tmp_path / "learn.flac", audio[: 12 * RATE]))
    faulty = write_flac(tmp_path / "faulty.flac", audio[18 * RATE:])
    normal = write_flac(tmp_path / "normal.flac", audio[12 * RATE: 20 * RATE])
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port,
            "reconnect_min_delay_s": 0.2, "reconnect_max_delay_s": 0.5, "ha_discovery": False}

    def config(clip, loop: bool):
        replay = {"paths": [str(clip)], "realtime": True, "loop": loop}
        return write_config(tmp_path, small_config(tmp_path, [clip], mqtt=mqtt,
                                                   source={"replay": replay}))

    broker.stop()  # the alarm happens while the broker is away: only the journal has it
    log_path = tmp_path / "first.log"
    process = start(config(faulty, loop=False), log_path)
    try:
        wait_log(log_path, "alarm update", timeout_s=40)
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        process.kill()
    event_id, update_id = UPDATE.findall(log_path.read_text())[0]

    broker.start()
    log_path = tmp_path / "second.log"
    process = start(config(normal, loop=True), log_path)
    try:
        def received(ms) -> list[dict]:
            return [b for b in (json.loads(m.payload) for m in ms) if b["event_id"] == event_id]

        messages = recorder.wait_for(lambda ms: any(b["type"] == "end" for b in received(ms)),
                                     "the end of the alarm", 30)
        wait_log(log_path, f"alarm end {event_id}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        process.kill()
    bodies = received(messages)
    assert update_id in [b["message_id"] for b in bodies]
    assert (bodies[0]["type"], bodies[-1]["type"], bodies[-1]["reason"]) == (
        "new", "end", "restart")
