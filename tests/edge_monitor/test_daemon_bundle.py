"""The daemon with a bundle (a real ONNX model in a .tar): no learning phase, the bundle's
detector judges the replayed clips, `check` validates it, a wrong machine key exits 2."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from daemon_support import DaemonThread, small_config, write_config
from test_bundle import make_onnx, make_tree, onnx_entry

from edge_monitor import cli
from edge_monitor.config.loader import load_config
from edge_monitor.core.scoring_config import ScoringConfig
from edge_monitor.daemon import plan_machines
from trainer.bundle_builder import build_bundle, write_tar
from trainer.dcase_data import read_dataset


def make_bundle(tmp_path):
    data = make_tree(tmp_path / "data")
    bundle = build_bundle(tmp_path / "bundle", [onnx_entry(make_onnx(tmp_path / "tiny.onnx"))],
                          read_dataset(data), ScoringConfig(k=2), 0.1)
    return data, write_tar(bundle, tmp_path / "bundle.tar")


def test_bundle_detector_judges_replayed_audio_without_learning(tmp_path, capsys):
    data, tar = make_bundle(tmp_path)
    test = sorted((data / "fan" / "test").glob("*source_test*"))
    normal = np.concatenate([sf.read(p, dtype="float32")[0] for p in test if "normal" in p.name])
    faulty = np.concatenate([sf.read(p, dtype="float32")[0] for p in test if "anomaly" in p.name])
    sf.write(tmp_path / "a_normal.wav", normal, 16000)
    sf.write(tmp_path / "b_faulty.wav", faulty, 16000)
    config = small_config(
        tmp_path, [tmp_path / "a_normal.wav"],
        model={"bundle": str(tar), "providers": ["CUDA", "CPU"]},
        machines=[{"name": "pump", "bundle_machine": "fan"}],
        windows={"window_s": None, "hop_s": 0.25},
        decision={"threshold_scale": 1.0, "k": 2, "n": 3, "cooldown_s": 0},
    )
    path = write_config(tmp_path, config)
    assert cli.main(["check", "-c", str(path)]) == 0
    assert "machine pump (channel 0): bank" in capsys.readouterr().out
    plan = plan_machines(load_config(path))
    assert plan.settings.window_s == 1.0 and plan.machines[0].learner is None
    clips = tmp_path / "state" / "clips"
    # Normal clips of the machine: judged at once (no learning), no alarm.
    daemon = DaemonThread(path)
    assert daemon.wait(60) == 0
    pump = daemon.daemon.processor.snapshot()["machines"]["pump"]
    assert pump["status"] == "normal" and pump["learning_progress"] is None
    assert pump["model_version"] == plan.machines[0].detector.model_version
    assert not list(clips.glob("*.flac"))
    # The same machine with the whistle: alarms, each with its clip.
    config["source"]["replay"]["paths"] = [str(tmp_path / "b_faulty.wav")]
    daemon = DaemonThread(write_config(tmp_path, config))
    assert daemon.wait(60) == 0
    assert daemon.daemon.processor.snapshot()["scored_windows"] > 0
    assert list(clips.glob("*.flac")), "the whistle in the faulty clips raised no alarm"


def test_wrong_bundle_machine_or_window_exits_2(tmp_path, capsys):
    _, tar = make_bundle(tmp_path)
    config = small_config(tmp_path, None, source={"kind": "sounddevice"},
                          model={"bundle": str(tar)},
                          machines=[{"name": "pump", "bundle_machine": "press"}],
                          windows={"window_s": None, "hop_s": 0.5})
    assert cli.main(["check", "-c", str(write_config(tmp_path, config))]) == 2
    assert "looks for 'press' in the bundle, which has ['fan']" in capsys.readouterr().err
    config["machines"] = [{"name": "fan"}]
    config["windows"] = {"window_s": 2.0, "hop_s": 0.5}
    assert cli.main(["check", "-c", str(write_config(tmp_path, config))]) == 2
    assert "the bundle's model takes 1.0 s windows" in capsys.readouterr().err
