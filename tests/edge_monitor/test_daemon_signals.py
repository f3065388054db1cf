"""The daemon as a real process: SIGHUP and the `reload` command reload without losing
audio, a bad config on reload is refused while the daemon keeps running, SIGTERM stops it
cleanly with `offline`, and a bad config at start exits 2 naming the key."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon_support import (
    RATE,
    DaemonThread,
    learn_first,
    mqtt_command,
    small_config,
    synth,
    write_config,
    write_flac,
)
from enroll_support import looping_replay

ROOT = "edge-monitor/test-box"


def start(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_monitor.cli", "run", "-c", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT,
        )


def wait_log(log_path: Path, text: str, timeout_s: float = 20.0, count: int = 1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{log_path.read_text(errors='replace')}")


def command(recorder, name: str, request_id: str, root: str = ROOT) -> dict:
    return mqtt_command(recorder, root, name, request_id)


def test_sighup_and_reload_command_keep_the_audio_running(tmp_path, mosquitto, mqtt_recorder):
    audio = synth(20.0)
    learn = write_flac(tmp_path / "learn.flac", audio[: 12 * RATE])
    live = write_flac(tmp_path / "live.flac", audio[12 * RATE:])
    mqtt = {"enabled": True, "host": mosquitto.host, "port": mosquitto.port}
    learn_first(tmp_path, learn)
    config = small_config(tmp_path, [live], mqtt=mqtt,
                          source={"replay": {"paths": [str(live)], "realtime": True,
                                             "loop": True, "contiguous": True}})
    path = write_config(tmp_path, config)
    log_path = tmp_path / "daemon.log"
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/#"])
    process = start(path, log_path)
    try:
        recorder.wait_for(lambda ms: any(m.topic == f"{ROOT}/availability" and
                                         m.payload == b"online" for m in ms), "online", 20)
        wait_log(log_path, "edge-monitor running")
        before = command(recorder, "status", "s1")["result"]
        assert before["machines"]["pump"]["status"] == "normal"
        # SIGHUP with a changed decision section: applied, the source keeps running.
        config["decision"] = {**config["decision"], "k": 3, "n": 4}
        write_config(tmp_path, config)
        process.send_signal(signal.SIGHUP)
        wait_log(log_path, "reload done (source kept running)")
        time.sleep(1.0)
        after = command(recorder, "status", "s2")["result"]
        assert after["frames"] > before["frames"]
        assert after["windows"] > before["windows"]
        assert after["windower_gaps"] == before["windower_gaps"] == 0  # no audio lost
        # A broken config on reload is refused; the daemon goes on with the old one.
        path.write_text(path.read_text() + "decision: {k: 9}\n")
        process.send_signal(signal.SIGHUP)
        wait_log(log_path, "reload rejected")
        assert "decision" in log_path.read_text()
        assert process.poll() is None
        # The reload command over MQTT, with the config repaired.
        write_config(tmp_path, config)
        reply = command(recorder, "reload", "r1")
        assert reply["ok"] and reply["result"]["reloaded"] is True
        assert reply["result"]["source_restarted"] is False
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    recorder.wait_for(lambda ms: [m.payload for m in ms if m.topic == f"{ROOT}/availability"][-1]
                      == b"offline", "offline after SIGTERM")
    assert "edge-monitor stopped" in log_path.read_text()


def retained_availability(mosquitto, mqtt_recorder, root: str) -> bytes:
    """What a newcomer sees: the retained availability of `root`."""
    topic = f"{root}/availability"
    return mqtt_recorder(mosquitto, [topic]).wait_topic(topic)[0].payload


def test_reload_with_new_mqtt_settings_moves_the_connection(tmp_path, mosquitto, mqtt_recorder):
    mqtt = {"enabled": True, "host": mosquitto.host, "port": mosquitto.port}
    path, config = looping_replay(tmp_path, mqtt=mqtt)
    recorder = mqtt_recorder(mosquitto, ["edge-monitor/#", "site2/#"])
    daemon = DaemonThread(path)
    moved = "site2/test-box"
    try:
        recorder.wait_for(lambda ms: any(m.topic == f"{ROOT}/availability" and
                                         m.payload == b"online" for m in ms), "online")
        # A new prefix (and an enrolment setting) through the MQTT reload command: the
        # reply comes back where it was asked for, and the box lives on under the new root.
        config["mqtt"] = {**mqtt, "prefix": "site2"}
        config["enrolment"] = {"min_seconds": 7}
        write_config(tmp_path, config)
        reply = command(recorder, "reload", "r1")
        assert reply["ok"] and reply["result"]["reloaded"] is True, reply
        assert daemon.daemon.enrolment.manager.gate.min_seconds == 7
        recorder.wait_for(lambda ms: any(m.topic == f"{moved}/machines/pump/state"
                                         for m in ms), "state under the new prefix")
        assert retained_availability(mosquitto, mqtt_recorder, moved) == b"online"
        assert retained_availability(mosquitto, mqtt_recorder, ROOT) == b"offline"
        assert command(recorder, "status", "s1", moved)["ok"]
        # Only the keep-alive changes: same topics, one connection at a time, still online.
        config["mqtt"] = {**mqtt, "prefix": "site2", "keepalive_s": 20}
        write_config(tmp_path, config)
        reply = command(recorder, "reload", "r2", moved)
        assert reply["ok"] and reply["result"]["reloaded"] is True, reply
        time.sleep(0.5)
        assert retained_availability(mosquitto, mqtt_recorder, moved) == b"online"
        assert daemon.daemon.mqtt.settings.keepalive_s == 20
        assert command(recorder, "status", "s2", moved)["ok"]
        # A secret that cannot be read is found before the running connection is touched.
        (tmp_path / "secret").mkdir()
        config["mqtt"] = {**mqtt, "prefix": "site2", "username": "box",
                          "password_file": str(tmp_path / "secret")}
        write_config(tmp_path, config)
        refused = command(recorder, "reload", "r3", moved)
        assert not refused["ok"] and "password_file" in refused["error"], refused
        assert command(recorder, "status", "s3", moved)["ok"]
        assert retained_availability(mosquitto, mqtt_recorder, moved) == b"online"
    finally:
        assert daemon.stop() == 0
    assert retained_availability(mosquitto, mqtt_recorder, moved) == b"offline"


def test_bad_config_at_start_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("windows:\n  hop_s: -1\nmachines:\n  - name: pump\n    chanel: 1\n")
    done = subprocess.run([sys.executable, "-m", "edge_monitor.cli", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{path}:2: windows.hop_s = -1" in done.stderr
    assert f"{path}:5: machines.0.chanel: unknown key" in done.stderr
