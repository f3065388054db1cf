"""A model-only bundle (one exported ONNX model at 32 kHz, no banks): the daemon learns the
machine's bank on site with that model, from 16 kHz audio it resamples, over a real broker;
the learned bank survives a restart only with the same model; enrolment and rollback work
on it; a damaged bundle is refused with one clear line."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import yaml
from daemon_support import (
    RATE,
    DaemonThread,
    dedupe,
    mqtt_command,
    small_config,
    synth,
    write_config,
    write_flac,
)
from fleet_support import DIM, install_args, make_model
from test_bundle import make_onnx
from test_daemon import logged_statuses
from test_rollout import ROOT, fleet_box  # noqa: F401 (a fixture)

from edge_monitor import cli
from edge_monitor.config.loader import load_config
from edge_monitor.core.bundle import MANIFEST_NAME, load_bundle
from edge_monitor.core.errors import BundleError
from edge_monitor.core.preprocess import PreprocessConfig
from edge_monitor.core.scoring_config import ScoringConfig
from edge_monitor.core.signing import load_private_key
from edge_monitor.daemon import plan_machines
from edge_monitor.enrolment.bank_store import BankStore
from trainer.bundle_builder import ModelEntry, build_bundle, write_tar
from trainer.cli import main as trainer_main

MODEL_RATE = 32000


def model_only_bundle(tmp_path, name="bundle", dim=12):
    """`edge-trainer bundle --model-only` on an export.json naming a 32 kHz ONNX model."""
    exports = tmp_path / f"exports-{name}"
    exports.mkdir()
    make_onnx(exports / "tiny.onnx", dim=dim)
    listing = {"models": [{"name": "tiny", "runtime": "onnx", "file": "tiny.onnx",
                           "sample_rate_hz": MODEL_RATE, "window_s": 1.0, "dim": dim,
                           "precision": "fp32"}]}
    (exports / "export.json").write_text(json.dumps(listing))
    out = tmp_path / name
    assert trainer_main(["bundle", "--model-only", "--out", str(out), "--model",
                         f"{exports / 'export.json'}:tiny", "--tar"]) == 0
    return out


def config_for(tmp_path, bundle, paths, **overrides):
    return small_config(
        tmp_path, paths, model={"bundle": str(bundle)},
        source={"sample_rate_hz": RATE},  # the daemon resamples 16 kHz capture to 32 kHz
        windows={"window_s": None, "hop_s": 0.5}, **overrides,
    )


def test_model_only_bundle_verifies_and_holds_no_banks(tmp_path, capsys):
    out = model_only_bundle(tmp_path)
    assert "model-only" in capsys.readouterr().out
    manifest = yaml.safe_load((out / MANIFEST_NAME).read_text())
    assert manifest["machines"] == {} and list(manifest["models"]) == ["tiny"]
    assert manifest["models"]["tiny"]["sample_rate_hz"] == MODEL_RATE
    assert not (out / "banks").exists()
    bundle = load_bundle(str(out) + ".tar")
    assert bundle.banks == {} and bundle.manifest.learns("pump")
    assert bundle.detectors() == {}
    capsys.readouterr()
    assert cli.main(["score", "--bundle", str(out), "--out", str(tmp_path / "s.csv"),
                     str(tmp_path)]) == 2
    assert "a model-only bundle has no banks to score against" in capsys.readouterr().err
    # Machines may be listed without banks: those learn, others are not in the bundle.
    manifest["machines"] = {"fan": {"machine_type": "fan"}}
    (out / MANIFEST_NAME).write_text(yaml.safe_dump(manifest))
    listed = load_bundle(out).manifest
    assert listed.learns("fan") and not listed.learns("pump")


def test_daemon_learns_with_the_bundle_model_then_judges(
    tmp_path, mosquitto, mqtt_recorder, caplog, capsys
):
    caplog.set_level(logging.INFO, logger="edge_monitor.pipeline.reporting")
    tar = str(model_only_bundle(tmp_path)) + ".tar"
    audio = synth(20.0, seed=5)
    clip = write_flac(tmp_path / "machine.flac", audio)
    config = config_for(tmp_path, tar, [clip],
                        mqtt={"enabled": True, "host": mosquitto.host, "port": mosquitto.port})
    path = write_config(tmp_path, config)
    capsys.readouterr()
    assert cli.main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "at 32000 Hz" in out
    assert "machine pump (channel 0): no bank yet; learns from the next 10 s of usable " \
           "audio (10 windows of 1 s) with model tiny" in out
    recorder = mqtt_recorder(mosquitto, ["edge-monitor/#"])
    daemon = DaemonThread(path)
    assert daemon.wait(60) == 0
    assert dedupe([status for status, _ in logged_statuses(caplog)]) == ["learning", "normal"]
    root = "edge-monitor/test-box"
    recorder.wait_topic(f"{root}/availability", 2)
    states = [json.loads(m.payload) for m in recorder.on(f"{root}/machines/pump/state")]
    assert states[0]["status"] == "learning" and states[-1]["status"] == "normal"
    scores = [json.loads(m.payload) for m in recorder.on(f"{root}/machines/pump/score")]
    assert scores, "no window was scored after learning"
    threshold = scores[-1]["threshold"]
    assert math.isfinite(threshold) and threshold > 0
    assert all(math.isfinite(s["score"]) for s in scores)
    snap = daemon.daemon.processor.snapshot()
    assert snap["scored_windows"] > 0
    assert daemon.daemon.source.sample_rate_hz == RATE  # captured at 16 kHz, judged at 32 kHz
    # A restart with the same model reuses the learned bank and judges at once.
    plan = plan_machines(load_config(path))
    setup = plan.machines[0]
    assert setup.learner is None and setup.bank_origin == "learned on site"
    assert plan.model_rate_hz == MODEL_RATE and setup.detector.sample_rate_hz == MODEL_RATE
    sha = load_bundle(tar).manifest.models["tiny"].sha256
    assert setup.detector.model_version == f"tiny-{sha[:16]}"
    assert math.isclose(setup.detector.threshold * 1.5, threshold, rel_tol=1e-6)
    capsys.readouterr()
    assert cli.main(["check", "-c", str(path)]) == 0
    assert f"bank {setup.detector.bank_version} learned on site" in capsys.readouterr().out
    # Enrolment and rollback work on the learned bank.
    new_sound = write_flac(tmp_path / "new.flac", synth(24.0, seed=9))
    assert cli.main(["enroll", "-c", str(path), "--machine", "pump", str(new_sound)]) == 0
    enrolled = plan_machines(load_config(path)).machines[0]
    assert enrolled.bank_origin == "enrolled on site"
    assert enrolled.detector.bank_version != setup.detector.bank_version
    assert cli.main(["enroll", "-c", str(path), "--machine", "pump", "--rollback"]) == 0
    back = plan_machines(load_config(path)).machines[0]
    assert back.detector.bank_version == setup.detector.bank_version
    # Another model (another sha256): the box learns again.
    other = str(model_only_bundle(tmp_path, "bundle-2", dim=10)) + ".tar"
    config["model"]["bundle"] = other
    relearn = plan_machines(load_config(write_config(tmp_path, config)))
    assert relearn.machines[0].learner is not None and relearn.machines[0].detector is None


def test_damaged_model_only_bundle_is_refused(tmp_path, capsys):
    out = model_only_bundle(tmp_path)
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    model = damaged / "models" / "tiny.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    clip = write_flac(tmp_path / "machine.flac", synth(2.0))
    path = write_config(tmp_path, config_for(tmp_path, damaged, [clip]))
    capsys.readouterr()
    assert cli.main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tiny.onnx: checksum mismatch for model 'tiny'" in err
    assert "copy the bundle again" in err
    # Two models and no banks: nothing to learn with, refused by name.
    manifest = yaml.safe_load((out / MANIFEST_NAME).read_text())
    manifest["models"]["second"] = manifest["models"]["tiny"]
    (damaged / MANIFEST_NAME).write_text(yaml.safe_dump(manifest))
    with pytest.raises(BundleError, match="learn on site, which takes one model"):
        load_bundle(damaged)
    # A threshold for a machine without banks would do nothing: refused.
    manifest = yaml.safe_load((out / MANIFEST_NAME).read_text())
    manifest["machines"] = {"pump": {"threshold": 0.2}}
    (damaged / MANIFEST_NAME).write_text(yaml.safe_dump(manifest))
    with pytest.raises(BundleError, match=r"machines\.pump: .*given for a machine without banks"):
        load_bundle(damaged)


def test_a_model_failing_while_learning_faults_the_machine_and_learning_resumes(
    tmp_path, caplog
):
    """A bundle model that gives NaN on loud windows (fleet_support's breaking model): while
    it fails the machine is in fault with the model's error, nothing is learned from those
    windows, and learning goes on once the model embeds again."""
    caplog.set_level(logging.INFO, logger="edge_monitor.pipeline.reporting")
    model = make_model(tmp_path / "breaking.onnx", nan_above=0.02)
    entry = ModelEntry("tiny", "onnx", RATE, 1.0, DIM, file=model)
    bundle = build_bundle(tmp_path / "bundle", [entry], None, ScoringConfig(),
                          preprocess=PreprocessConfig(normalise_loudness=False))
    quiet = synth(24.0, seed=5)  # window power 0.0025: the model embeds it
    audio = quiet.copy()
    audio[4 * RATE:8 * RATE] *= 4.0  # power 0.04: NaN
    clip = write_flac(tmp_path / "machine.flac", audio)
    config = small_config(tmp_path, [clip], model={"bundle": str(bundle)},
                          windows={"window_s": None, "hop_s": 0.5})
    daemon = DaemonThread(write_config(tmp_path, config))
    assert daemon.wait(60) == 0
    logged = logged_statuses(caplog)
    assert dedupe([status for status, _ in logged]) == ["learning", "fault", "learning",
                                                        "normal"]
    reason = next(reason for status, reason in logged if status == "fault")
    assert reason.startswith("model error: ") and "NaN or infinite values" in reason
    bank = plan_machines(load_config(write_config(tmp_path, config))).machines[0].detector
    assert bank is not None and math.isfinite(bank.threshold) and bank.threshold > 0


def test_model_only_bundle_rolls_out_and_the_box_learns_with_it(fleet_box, tmp_path):  # noqa: F811
    """bundle/install of a signed model-only bundle on a running box: the machine learns with
    the new model, then its first judged windows are watched and the install stays."""
    daemon, recorder = fleet_box["daemon"], fleet_box["recorder"]
    ops = load_private_key(tmp_path / "keys" / "ops.key")
    model = make_model(tmp_path / "work" / "fleet-model.onnx", seed=6)
    entry = ModelEntry("tiny", "onnx", RATE, 1.0, DIM, file=model)
    bundle = build_bundle(tmp_path / "work" / "model-only", [entry], None, ScoringConfig(),
                          sign_key=ops)
    tar = write_tar(bundle, tmp_path / "work" / "model-only.tar")
    reply = mqtt_command(recorder, ROOT, "bundle/install", "i-mo", **install_args(tar))
    assert reply["ok"], reply
    assert reply["result"]["watched_windows"] == 3
    sha = load_bundle(tar).manifest.models["tiny"].sha256
    pump = daemon.daemon.processor.snapshot()["machines"]["pump"]
    assert pump["model_version"] == f"tiny-{sha[:16]}" and pump["status"] != "learning"
    history = BankStore(tmp_path / "state", "pump").history()
    assert any(h["action"] == "learn" and list(h["versions"]) == ["tiny"] for h in history)
