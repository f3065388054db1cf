"""Rollout demo: signed bundles built on the workstation side, installed on a running daemon
by one MQTT command each, and what a box refuses or undoes by itself.

Everything is real: `edge-trainer keygen` and `edge-trainer bundle --sign` (subprocesses) on
real ToyCar recordings (a small subset of ../shared/data/toycar as the training tree),
`edge-monitor run` as its own process replaying ToyCar test clips in real time, a loopback
mosquitto, MQTT commands from an operator client, `edge-monitor fleet`. The steps:

1. v1 (signed) serves from the config; v2 (signed) is installed by `bundle/install`;
2. an unsigned bundle, one signed by a key the box does not trust, and a signed bundle
   modified afterwards are refused, v2 keeps serving;
3. a signed bundle whose model breaks on the box's audio (an ONNX model calibrated on the
   training rig's level that gives NaN on the box's louder input: it passes every check the
   workstation and `check` make) is installed, faults on its first windows and is rolled
   back by the box itself; then `bundle/rollback` returns to v1.

Prints a transcript; nothing here asserts. Needs the `train` extra (onnx) and mosquitto.

    .venv/bin/python tools/rollout_demo.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import paho.mqtt.client as paho
import soundfile as sf
import yaml
from onnx import TensorProto, helper, numpy_helper

from edge_monitor.core.bundle import MANIFEST_NAME
from edge_monitor.core.preprocess import PreprocessConfig
from edge_monitor.core.scoring_config import ScoringConfig
from edge_monitor.core.signing import load_private_key
from edge_monitor.demo.local_broker import LocalMosquitto, free_port
from trainer.bundle_builder import ModelEntry, build_bundle, write_tar
from trainer.dcase_data import read_dataset

REPO = Path(__file__).resolve().parents[1]
TOYCAR = REPO.parent / "shared" / "data" / "toycar" / "ToyCar"
DEVICE = "demo-box"
ROOT = f"edge-monitor/{DEVICE}"
RATE = 16000
FRAME = 512
DIM = 16
REPLY_TIMEOUT_S = 180.0
FINAL_STEPS = {"installed", "refused", "failed", "rolled-back"}


def sh(*args: str) -> str:
    """Run a repo CLI as its own process, print the command and its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    names = {"trainer.cli": "edge-trainer", "edge_monitor.cli": "edge-monitor"}
    shown = " ".join(names.get(a, a) for a in args)
    print(f"$ {shown}")
    done = subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True,
                          text=True, check=False)
    out = (done.stdout + "\n".join(line for line in done.stderr.splitlines()
                                   if " INFO " not in line)).strip()
    if out:
        print("  " + out.replace("\n", "\n  "))
    if done.returncode not in (0,):
        print(f"  (exit code {done.returncode})")
    return done.stdout


def training_tree(root: Path, source: int, target: int) -> Path:
    """A DCASE-layout tree of the first ToyCar training clips (symlinks, no copies)."""
    train = root / "ToyCar" / "train"
    train.mkdir(parents=True)
    clips = sorted((TOYCAR / "train").glob("*.flac"))
    chosen = [p for p in clips if "_source_" in p.name][:source] + \
        [p for p in clips if "_target_" in p.name][:target]
    for clip in chosen:
        (train / clip.name).symlink_to(clip)
    return root


def broken_model(path: Path, limit: float) -> Path:
    """Framed projection, magnitude, mean, times sqrt(limit - mean(x^2)): NaN when louder."""
    kernel = np.random.default_rng(5).normal(size=(DIM, 1, FRAME)).astype(np.float32)
    nodes = [
        helper.make_node("Unsqueeze", ["wave", "axis"], ["x"]),
        helper.make_node("Conv", ["x", "kernel"], ["frames"], strides=[FRAME]),
        helper.make_node("Abs", ["frames"], ["mag"]),
        helper.make_node("ReduceMean", ["mag", "time"], ["features"], keepdims=0),
        helper.make_node("Mul", ["wave", "wave"], ["square"]),
        helper.make_node("ReduceMean", ["square", "axis"], ["power"], keepdims=1),
        helper.make_node("Sub", ["limit", "power"], ["room"]),
        helper.make_node("Sqrt", ["room"], ["gain"]),
        helper.make_node("Mul", ["features", "gain"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "calibrated-on-the-rig",
        [helper.make_tensor_value_info("wave", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, DIM])],
        [numpy_helper.from_array(kernel, "kernel"),
         numpy_helper.from_array(np.array([1], np.int64), "axis"),
         numpy_helper.from_array(np.array([2], np.int64), "time"),
         numpy_helper.from_array(np.array([[limit]], np.float32), "limit")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


class Operator:
    """The operator's MQTT client: sends commands, collects replies and bundle reports."""

    def __init__(self, port: int) -> None:
        self.replies: dict[str, dict] = {}
        self.reports: list[dict] = []
        self.cond = threading.Condition()
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                                  client_id="operator")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"{ROOT}/cmd/result", 1), (f"{ROOT}/bundle", 1)])
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        body = json.loads(message.payload)
        with self.cond:
            if message.topic.endswith("/bundle"):
                self.reports.append(body)
            else:
                self.replies[body["request_id"]] = body
            self.cond.notify_all()

    def command(self, name: str, request_id: str, **fields) -> dict:
        payload = json.dumps({"request_id": request_id, **fields})
        print(f"$ mosquitto_pub -q 1 -t {ROOT}/cmd/{name} -m '{payload}'")
        self.client.publish(f"{ROOT}/cmd/{name}", payload, 1)
        def steps() -> list[str]:
            return [r["install"]["step"] for r in self.reports
                    if r.get("install") and r["install"].get("request_id") == request_id]

        with self.cond:
            self.cond.wait_for(lambda: request_id in self.replies, REPLY_TIMEOUT_S)
            reply = self.replies.get(request_id, {"error": "no reply"})
            # The reply goes out directly, the retained report through the journal: wait for it.
            self.cond.wait_for(lambda: bool(set(steps()) & FINAL_STEPS), 10.0)
            seen = steps()
        print(f"  reply: {json.dumps(reply)}")
        if seen:
            print(f"  retained {ROOT}/bundle steps: {' -> '.join(_dedupe(seen))}")
        return reply


def _dedupe(values: list[str]) -> list[str]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def install_fields(tar: Path) -> dict:
    data = tar.read_bytes()
    return {"url": tar.resolve().as_uri(), "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, default=None, help="keep the work files here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rollout-demo-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    ws, box = work / "workstation", work / "box"
    ws.mkdir(exist_ok=True)
    box.mkdir(exist_ok=True)
    print("== workstation: keys and signed bundles")
    tree = training_tree(ws / "data", 40, 10)
    sh("trainer.cli", "keygen", "--out", str(ws / "keys" / "ops"))
    sh("trainer.cli", "keygen", "--out", str(ws / "keys" / "rogue"))
    common = ["trainer.cli", "bundle", "--data", str(tree), "--model", "logmel-stats", "--tar"]
    sh(*common, "--out", str(ws / "v1"), "--sign", str(ws / "keys" / "ops.key"))
    sh(*common, "--out", str(ws / "v2"), "--k", "3", "--sign", str(ws / "keys" / "ops.key"))
    sh(*common, "--out", str(ws / "unsigned"), "--k", "4")
    sh(*common, "--out", str(ws / "rogue"), "--k", "5", "--sign", str(ws / "keys" / "rogue.key"))
    tampered = ws / "tampered"
    shutil.copytree(ws / "v2", tampered)
    manifest = yaml.safe_load((tampered / MANIFEST_NAME).read_text())
    manifest["machines"]["ToyCar"]["threshold"] *= 10
    (tampered / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False))
    write_tar(tampered, ws / "tampered.tar")
    print(f"tampered: copy of v2 with machines.ToyCar.threshold x10 in {MANIFEST_NAME} "
          "after signing")

    clips = read_dataset(tree)
    train_ms = max(float(np.mean(sf.read(c.path, dtype="float32")[0] ** 2)) for c in clips)
    limit = 1.5 * train_ms
    broken = build_bundle(
        ws / "broken", [ModelEntry("rig-model", "onnx", RATE, 10.0, DIM,
                                   file=broken_model(ws / "rig-model.onnx", limit))],
        clips, ScoringConfig(k=2), 0.01, preprocess=PreprocessConfig(normalise_loudness=False),
        sign_key=load_private_key(ws / "keys" / "ops.key"))
    write_tar(broken, ws / "broken.tar")
    print(f"broken: signed bundle of an ONNX model whose output is NaN when a window's mean "
          f"square exceeds {limit:.2e} (1.5x the loudest training clip)")

    print("\n== the box: live audio, config, daemon")
    tests = sorted((TOYCAR / "test").glob("*_source_test_normal_*.flac"))[:8]
    live = np.concatenate([sf.read(p, dtype="float32")[0] for p in tests])
    gain = min(0.9 / float(np.abs(live).max()), float(np.sqrt(4 * limit / np.mean(live ** 2))))
    sf.write(box / "live.flac", live * gain, RATE)
    print(f"live input: 8 ToyCar normal test clips at {20 * np.log10(gain):+.1f} dB (the box's "
          "microphone gain), replayed in real time, looped")
    keys = box / "keys"
    keys.mkdir(exist_ok=True)
    shutil.copy(ws / "keys" / "ops.pub", keys / "ops.pub")
    port = free_port()
    broker = LocalMosquitto(box, [f"listener {port} 127.0.0.1", "allow_anonymous true"], [port])
    broker.start()
    config = {
        "device_id": DEVICE, "state_dir": str(box / "state"),
        "source": {"kind": "replay", "replay": {"paths": ["live.flac"], "loop": True}},
        "machines": [{"name": "toycar", "bundle_machine": "ToyCar"}],
        "model": {"bundle": str(ws / "v1.tar"), "trusted_keys": ["keys/ops.pub"],
                  "require_signature": True},
        "mqtt": {"host": "127.0.0.1", "port": port, "ha_discovery": False,
                 "commands_allowed": ["status", "bundle/install", "bundle/rollback"]},
        "rollout": {"watch_windows": 3, "watch_timeout_s": 120},
    }
    (box / "edge-monitor.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print((box / "edge-monitor.yaml").read_text().rstrip())
    sh("edge_monitor.cli", "check", "-c", str(box / "edge-monitor.yaml"))
    log_file = open(box / "daemon.log", "w")  # noqa: SIM115 - open while the daemon runs
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge_monitor.cli", "run", "-c", str(box / "edge-monitor.yaml")],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log_file, stderr=subprocess.STDOUT)
    print(f"$ edge-monitor run -c {box / 'edge-monitor.yaml'}   (pid {daemon.pid}, log "
          f"{box / 'daemon.log'})")
    operator = Operator(port)
    try:
        time.sleep(3)
        print("\n== operator: install v2 (signed by ops)")
        operator.command("bundle/install", "roll-v2", **install_fields(ws / "v2.tar"))
        for name in ("unsigned", "rogue", "tampered"):
            print(f"\n== operator: install {name}")
            operator.command("bundle/install", f"roll-{name}", **install_fields(ws / f"{name}.tar"))
        print("\n== operator: install broken (signed by ops, breaks on the box's audio)")
        operator.command("bundle/install", "roll-broken", **install_fields(ws / "broken.tar"))
        print("\n== the fleet as the broker holds it")
        sh("edge_monitor.cli", "fleet", "--broker", "127.0.0.1", "--port", str(port))
        print("\n== operator: bundle/rollback")
        operator.command("bundle/rollback", "back-1")
        sh("edge_monitor.cli", "fleet", "--broker", "127.0.0.1", "--port", str(port))
        print(f"\n== audit log {box / 'state' / 'bundle-audit.jsonl'} (request, step, error)")
        for line in (box / "state" / "bundle-audit.jsonl").read_text().splitlines():
            record = json.loads(line)
            print(f"  {record['request_id']:<14} {record['step']:<12} "
                  f"{(record.get('error') or '')[:110]}")
        print("\n== daemon log, model errors and swaps")
        for line in (box / "daemon.log").read_text().splitlines():
            if any(k in line for k in ("scoring failed", "reload done", "scores again")):
                print("  " + line[:220])
    finally:
        operator.client.loop_stop()
        daemon.terminate()
        daemon.wait(30)
        log_file.close()
        broker.stop()
        print(f"\ndaemon exit code {daemon.returncode}; work files in {work}")


if __name__ == "__main__":
    main()
