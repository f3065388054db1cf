"""Two real mosquitto brokers bridged site -> centre, with the daemon on the site broker and
the consumer on the central one. The centre goes away and comes back in the middle: every
alarm event reaches the central consumer at least once, in order per alarm; a rollout
commanded from the centre installs across the bridge; the fleet view reads the box there.

The bridge is the one docs/operations.md shows (conf/mosquitto/bridge-site.conf).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
from daemon_support import DaemonThread, mqtt_command, small_config, write_config
from fleet_support import data_tree, install_args, make_bundle

from edge_monitor.core.signing import generate_keypair, load_private_key
from edge_monitor.demo.local_broker import LocalMosquitto, free_port
from edge_monitor.fleet.view import collect

ROOT = "edge-monitor/test-box"
REPO = Path(__file__).resolve().parents[2]
BRIDGE_EXAMPLE = "conf/mosquitto/bridge-site.conf"
EVENT_ORDER = {"new": 0, "update": 1, "end": 2}


def site_broker(workdir, central_port: int) -> LocalMosquitto:
    """The site broker: the example bridge config pointed at the loopback centre."""
    example = (REPO / BRIDGE_EXAMPLE).read_text()
    example = re.sub(r"^address .*$", f"address 127.0.0.1:{central_port}", example, flags=re.M)
    port = free_port()
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence true",
             f"persistence_location {workdir}/", *example.splitlines(), "restart_timeout 1"]
    workdir.mkdir(parents=True, exist_ok=True)
    broker = LocalMosquitto(workdir, lines, [port], verbose=True)
    broker.start()
    return broker


def alarm_audio(work) -> tuple:
    """Normal and whistling fan clips alternating, 3 s each: one alarm every 6 s."""
    data = data_tree(work / "data")
    test = sorted((data / "fan" / "test").glob("*source_test*"))
    normal = np.concatenate([sf.read(p, dtype="float32")[0] for p in test if "normal" in p.name])
    faulty = np.concatenate([sf.read(p, dtype="float32")[0] for p in test if "anomaly" in p.name])
    path = work / "alarms.wav"
    sf.write(path, np.concatenate([normal, faulty]), 16000)
    return path


def events(messages):
    out = []
    for m in messages:
        if m.topic.endswith("/events"):
            out.append(json.loads(m.payload))
    return out


def test_events_cross_a_restarted_bridge_and_rollout_works_from_the_centre(
    tmp_path, mosquitto_factory, mqtt_recorder
):
    central = mosquitto_factory(persistence=True)
    site = site_broker(tmp_path / "site", central.port)
    try:
        ops_key, ops_pub, _ = generate_keypair(tmp_path / "keys" / "ops")
        work = tmp_path / "work"
        work.mkdir()
        _, v1 = make_bundle(work, "v1", 0, load_private_key(ops_key))
        v2_dir, v2 = make_bundle(work, "v2", 1, load_private_key(ops_key))
        config = small_config(
            tmp_path, [alarm_audio(work)],
            source={"kind": "replay", "block_s": 0.05,
                    "replay": {"paths": [str(work / "alarms.wav")], "realtime": True,
                               "loop": True}},
            model={"bundle": str(v1), "trusted_keys": [str(ops_pub)], "require_signature": True},
            machines=[{"name": "pump", "bundle_machine": "fan"}],
            windows={"window_s": None, "hop_s": 0.25},
            decision={"threshold_scale": 1.0, "k": 2, "n": 3, "cooldown_s": 0,
                      "update_interval_s": 1},
            mqtt={"enabled": True, "host": site.host, "port": site.port, "ha_discovery": False,
                  "score_telemetry": False,
                  "commands_allowed": ["status", "bundle/install", "bundle/rollback"]},
            rollout={"watch_windows": 3, "watch_timeout_s": 30},
        )
        consumer = mqtt_recorder(central, [f"{ROOT}/#"], persistent=True)
        bridges = mqtt_recorder(central, ["edge-monitor/bridges/#"])
        local = mqtt_recorder(site, [f"{ROOT}/machines/+/events"])  # what the box published
        daemon = DaemonThread(write_config(tmp_path, config))
        consumer.wait_for(lambda ms: any(e["type"] == "end" for e in events(ms)),
                          "a whole alarm at the centre", 60)

        # The bridge announces itself at the centre (retained), so a cut-off site shows.
        bridges.wait_for(lambda ms: any(m.topic == "edge-monitor/bridges/site-a/state"
                                        and m.payload == b"1" for m in ms), "the bridge's state")
        central.stop()  # the bridge link (and the consumer) lose the centre
        published = len(events(local.messages))
        local.wait_for(lambda ms: sum(e["type"] == "new" for e in events(ms[published:])) >= 2,
                       "two alarms raised while the centre is away", 60)
        central.start()

        sent = {e["message_id"]: e for e in events(local.messages)}
        consumer.wait_for(lambda ms: set(sent) <= {e["message_id"] for e in events(ms)},
                          "every event the box published, at the centre", 60)
        received = events(consumer.messages)
        by_alarm: dict[str, list[str]] = {}
        seen = set()
        for event in received:
            if event["message_id"] in seen:  # at least once: repeats are allowed, dropped here
                continue
            seen.add(event["message_id"])
            by_alarm.setdefault(event["event_id"], []).append(event["type"])
        assert len(by_alarm) >= 3
        for alarm, types in by_alarm.items():
            ranks = [EVENT_ORDER[t] for t in types]
            assert ranks == sorted(ranks), f"alarm {alarm} arrived out of order: {types}"

        # Rollout across the bridge: the command goes in, the reply and report come out.
        reply = mqtt_command(consumer, ROOT, "bundle/install", "bridge-1", **install_args(v2))
        assert reply["ok"], reply
        v2_version = reply["result"]["version"]
        consumer.wait_for(lambda ms: any(
            m.topic == f"{ROOT}/bundle" and json.loads(m.payload)["running"]["version"]
            == v2_version for m in ms), "the installed bundle reported at the centre")
        boxes = collect(central.host, central.port)
        assert [b.device for b in boxes] == ["test-box"]
        view = boxes[0].to_dict()
        assert view["online"] is True and view["bundle"]["version"] == v2_version
        assert view["bundle"]["signer"] == "ops" and view["machines"][0]["machine"] == "pump"
        assert (v2_dir / "manifest.yaml").read_text().count(v2_version) == 1
        assert daemon.stop() == 0
    finally:
        site.stop()
