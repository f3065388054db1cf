"""Rollout over MQTT on a running daemon (real mosquitto, real ONNX bundles, real keys):
a signed bundle installed by one command, unsigned / untrusted / tampered / wrong-checksum
ones refused with nothing changed, a bundle that breaks on the box's audio rolled back by
itself, `bundle/rollback`, the retained `bundle` topic and the audit log."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from daemon_support import DaemonThread, mqtt_command, small_config, write_config
from fleet_support import install_args, loud_audio, make_bundle

from edge_monitor import cli
from edge_monitor.core.bundle import MANIFEST_NAME
from edge_monitor.core.signing import generate_keypair, load_private_key
from edge_monitor.fleet.rollout import AUDIT_NAME
from edge_monitor.mqtt.commands import CommandRouter
from edge_monitor.mqtt.topics import CommandReply
from trainer.bundle_builder import write_tar

ROOT = "edge-monitor/test-box"
ALLOWED = ["status", "bundle/install", "bundle/rollback"]


def test_bundle_commands_are_off_unless_listed():
    router = CommandRouter(allowed=())
    router.register("bundle/install", lambda command: {})
    replies: list[CommandReply] = []
    payload = json.dumps({"request_id": "r1", "url": "file:///x.tar", "sha256": "0" * 64,
                          "size_bytes": 10}).encode()
    router.submit("bundle/install", payload, replies.append)
    assert not replies[0].ok
    assert "add it to mqtt.commands_allowed (bundle commands are off unless listed there)" \
        in replies[0].error
    router = CommandRouter(allowed=())
    router.submit("bundle/install", json.dumps({"request_id": "r2", "url": "http://x/b.tar",
                                                "sha256": "0" * 64, "size_bytes": 1}).encode(),
                  replies.append)
    assert "scheme 'http' is not allowed; give an https:// or file:// URL" in replies[1].error


def retained_bundle(recorder, step=None):
    """The newest `bundle` report (after waiting for one whose install reached `step`)."""
    def reports(messages):
        return [json.loads(m.payload) for m in messages
                if m.topic == f"{ROOT}/bundle" and m.payload]
    if step is not None:
        recorder.wait_for(lambda ms: (r := reports(ms)) and (r[-1]["install"] or {}).get(
            "step") == step, f"a bundle report with step {step}")
    return reports(recorder.messages)[-1]


def serving(daemon):
    return daemon.daemon.processor.snapshot()["machines"]["pump"]["model_version"]


@pytest.fixture
def fleet_box(tmp_path, mosquitto, mqtt_recorder):
    keys = tmp_path / "keys"
    ops_key, ops_pub, ops_id = generate_keypair(keys / "ops")
    rogue_key, _, rogue_id = generate_keypair(keys / "rogue")
    ops, rogue = load_private_key(ops_key), load_private_key(rogue_key)
    work = tmp_path / "work"
    work.mkdir()
    bundles = {
        "v1": make_bundle(work, "v1", 0, ops),
        "v2": make_bundle(work, "v2", 1, ops),
        "unsigned": make_bundle(work, "unsigned", 2),
        "rogue": make_bundle(work, "rogue", 3, rogue),
        "broken": make_bundle(work, "broken", 5, ops, nan_above=0.02),
    }
    tampered = work / "tampered"
    shutil.copytree(make_bundle(work, "t-src", 4, ops)[0], tampered)
    manifest = yaml.safe_load((tampered / MANIFEST_NAME).read_text())
    manifest["machines"]["fan"]["threshold"] *= 10
    (tampered / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False))
    bundles["tampered"] = (tampered, write_tar(tampered, work / "tampered.tar"))
    config = small_config(
        tmp_path, [loud_audio(work)],
        source={"kind": "replay", "block_s": 0.05,
                "replay": {"paths": [str(work / "live.wav")], "realtime": True, "loop": True}},
        model={"bundle": str(bundles["v1"][1]), "trusted_keys": [str(ops_pub)],
               "require_signature": True},
        machines=[{"name": "pump", "bundle_machine": "fan"}],
        windows={"window_s": None, "hop_s": 0.25},
        mqtt={"enabled": True, "host": mosquitto.host, "port": mosquitto.port,
              "commands_allowed": ALLOWED, "ha_discovery": False},
        rollout={"watch_windows": 3, "watch_timeout_s": 30},
    )
    recorder = mqtt_recorder(mosquitto, [f"{ROOT}/#"])
    config_path = write_config(tmp_path, config)
    daemon = DaemonThread(config_path)
    daemon.wait_until(lambda s: s["machines"]["pump"]["scored_windows"] >= 2, "first scores")
    yield {"daemon": daemon, "recorder": recorder, "bundles": bundles, "ops_id": ops_id,
           "config": config_path,
           "rogue_id": rogue_id, "state": tmp_path / "state"}
    assert daemon.stop() == 0


def version_of(bundle_dir):
    return yaml.safe_load((bundle_dir / MANIFEST_NAME).read_text())["version"]


def test_signed_bundle_installs_and_bad_ones_change_nothing(fleet_box, capsys):
    daemon, recorder, bundles = fleet_box["daemon"], fleet_box["recorder"], fleet_box["bundles"]
    ops_id = fleet_box["ops_id"]
    v1, v2 = version_of(bundles["v1"][0]), version_of(bundles["v2"][0])
    recorder.wait_topic(f"{ROOT}/bundle")
    assert retained_bundle(recorder)["running"] == {
        "origin": "config", "version": v1, "signer": "ops", "key_id": ops_id}

    reply = mqtt_command(recorder, ROOT, "bundle/install", "i-v2", **install_args(
        bundles["v2"][1]))
    assert reply["ok"], reply
    assert reply["result"]["version"] == v2 and reply["result"]["signer"] == "ops"
    assert reply["result"]["watched_windows"] == 3
    assert serving(daemon) == v2
    status = retained_bundle(recorder, "installed")
    assert status["running"]["version"] == v2 and status["running"]["origin"] == "installed"
    # The install outlives a restart: `check` (and so `run`) plans on the installed bundle.
    assert cli.main(["check", "-c", str(fleet_box["config"])]) == 0
    assert f"model: bundle {v2} (installed by bundle/install; signed by ops (key id {ops_id}))" \
        in capsys.readouterr().out
    steps = [json.loads(m.payload)["install"]["step"] for m in recorder.on(f"{ROOT}/bundle")
             if json.loads(m.payload)["install"] and
             json.loads(m.payload)["install"]["request_id"] == "i-v2"]
    assert steps[0] == "downloading" and steps[-1] == "installed"
    assert {"verifying", "swapping", "watching"} <= set(steps)

    refusals = {
        "unsigned": "bundle is not signed and model.require_signature is true",
        "rogue": f"signed by key id {fleet_box['rogue_id']}, which this box does not trust",
        "tampered": f"the signature of key id {ops_id} does not match manifest.yaml",
    }
    for name, expected in refusals.items():
        reply = mqtt_command(recorder, ROOT, "bundle/install", f"i-{name}",
                             **install_args(bundles[name][1]))
        assert not reply["ok"] and expected in reply["error"], reply
        assert "\n" not in reply["error"]
        # The refusal names what the operator sent, not where the box unpacked it.
        assert reply["error"].startswith(bundles[name][1].resolve().as_uri() + ": ")
        assert retained_bundle(recorder, "refused")["install"]["request_id"] == f"i-{name}"
        assert serving(daemon) == v2
    wrong = {**install_args(bundles["v1"][1]), "sha256": "ab" * 32}
    reply = mqtt_command(recorder, ROOT, "bundle/install", "i-sha", **wrong)
    assert not reply["ok"] and "does not match the command's abababababab" in reply["error"]
    assert retained_bundle(recorder, "failed")["install"]["request_id"] == "i-sha"
    assert serving(daemon) == v2
    # Only the serving and the previous bundle stay unpacked on the box.
    assert len(list((fleet_box["state"] / "bundles").glob("bundle-*"))) == 1


def test_bundle_that_faults_on_its_first_windows_is_rolled_back(fleet_box):
    daemon, recorder, bundles = fleet_box["daemon"], fleet_box["recorder"], fleet_box["bundles"]
    v1, v2 = version_of(bundles["v1"][0]), version_of(bundles["v2"][0])
    assert mqtt_command(recorder, ROOT, "bundle/install", "i-v2",
                        **install_args(bundles["v2"][1]))["ok"]
    reply = mqtt_command(recorder, ROOT, "bundle/install", "i-broken",
                         **install_args(bundles["broken"][1]))
    assert not reply["ok"]
    assert "rolled-back: machine pump: " in reply["error"] and "model error" in reply["error"]
    assert "NaN or infinite values" in reply["error"]
    assert serving(daemon) == v2
    daemon.wait_until(lambda s: s["machines"]["pump"]["status"] != "fault", "v2 scoring again")
    status = retained_bundle(recorder, "rolled-back")
    assert status["running"]["version"] == v2
    assert status["install"]["version"] == version_of(bundles["broken"][0])

    reply = mqtt_command(recorder, ROOT, "bundle/rollback", "r-1")
    assert reply["ok"], reply
    assert reply["result"]["from"]["version"] == v2 and reply["result"]["to"]["version"] == v1
    assert reply["result"]["to"]["origin"] == "config" and serving(daemon) == v1
    reply = mqtt_command(recorder, ROOT, "bundle/rollback", "r-2")
    assert not reply["ok"] and "no installed bundle to roll back" in reply["error"]

    audit = [json.loads(line) for line in
             (fleet_box["state"] / AUDIT_NAME).read_text().splitlines()]
    broken = [r["step"] for r in audit if r["request_id"] == "i-broken"]
    assert broken[:4] == ["downloading", "verifying", "swapping", "watching"]
    assert broken[-1] == "rolled-back"
    assert all(r["who"].startswith("mqtt:") for r in audit)
