"""ACP: improves a fusion on constructed scores, never returns invalid weights, is validated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from trainer.acp import AcpSettings, Labelled, acp_search, project_to_simplex, run_acp
from trainer.cli import main as trainer_main
from trainer.student import build_student, save_student


def _labelled(per_stratum: int) -> Labelled:
    rows = [(d, a) for d in ("source", "target") for a in (False, True) for _ in range(per_stratum)]
    return Labelled(
        is_anomaly=np.array([a for _, a in rows]),
        domains=np.array([d for d, _ in rows]),
        sections=np.full(len(rows), "toy/00"),
    )


def _constructed(labelled: Labelled, seed: int = 0) -> np.ndarray:
    """Model 0 sees anomalies in the source domain, model 1 in the target, model 2 is noise."""
    rng = np.random.default_rng(seed)
    n = len(labelled.is_anomaly)
    signal = labelled.is_anomaly.astype(float)
    source = labelled.domains == "source"
    return np.vstack([
        np.where(source, 2.0 * signal, 0.0) + rng.normal(size=n),
        np.where(~source, 2.0 * signal, 0.0) + rng.normal(size=n),
        3.0 * rng.normal(size=n),
    ])


def _valid(weights: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(weights)) and np.all(weights >= 0)
                and abs(weights.sum() - 1.0) < 1e-9)


def test_acp_beats_uniform_and_down_weights_noise() -> None:
    labelled = _labelled(60)
    scores = _constructed(labelled)
    report = run_acp(["source-expert", "target-expert", "noise"], scores, labelled, folds=4,
                     settings=AcpSettings(restarts=3, iterations=80))
    assert _valid(report.weights) and all(_valid(w) for w in report.fold_weights)
    assert report.weights[2] < 0.15
    assert report.acp_hmean_in_sample > report.uniform_hmean + 0.05
    assert report.acp_hmean_validated > report.uniform_hmean + 0.03
    assert report.acp_hmean_validated > max(report.single_hmean.values())
    assert "ACP ensemble (k-fold validated)" in report.table()


@pytest.mark.parametrize("seed", range(5))
def test_weights_are_always_valid_even_on_degenerate_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labelled = _labelled(8)
    scores = rng.normal(size=(4, len(labelled.is_anomaly))) * rng.choice([0, 1e6, 1], size=(4, 1))
    scores[rng.integers(4)] = np.nan  # a broken model
    weights, _ = acp_search(scores, labelled.hmean, AcpSettings(restarts=2, iterations=30,
                                                                 seed=seed))
    assert _valid(weights)
    for raw in (np.array([np.nan, -1.0, 2.0]), np.array([-3.0, -1.0, 0.0]), np.zeros(3)):
        assert _valid(project_to_simplex(raw))


def test_one_model_gets_all_the_weight() -> None:
    labelled = _labelled(5)
    weights, _ = acp_search(_constructed(labelled)[:1], labelled.hmean, AcpSettings())
    assert weights.tolist() == [1.0]


def test_acp_cli_writes_weights_a_bundle_can_read(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(2)
    t = np.arange(16000) / 16000
    plan = [("train", "source", "normal", 8), ("train", "target", "normal", 2),
            ("test", "source", "normal", 4), ("test", "source", "anomaly", 4),
            ("test", "target", "normal", 4), ("test", "target", "anomaly", 4)]
    for split, domain, label, count in plan:
        for i in range(count):
            audio = 0.1 * np.sin(2 * np.pi * (140 if domain == "source" else 180) * t)
            audio = audio + 0.02 * rng.normal(size=t.size) + (
                0.05 * np.sin(2 * np.pi * 3000 * t) if label == "anomaly" else 0)
            name = f"section_00_{domain}_{split}_{label}_{i}.wav"
            path = tmp_path / "data" / "fan" / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, audio.astype(np.float32), 16000)
    torch.manual_seed(0)
    student = save_student(build_student({"window_s": 1.0, "n_fft": 256, "hop": 128, "n_mels": 16,
                                          "channels": [4], "dim": 8}), tmp_path / "s.pt")
    out = tmp_path / "acp"
    assert trainer_main(["acp", "--data", str(tmp_path / "data"), "--model", "logmel-stats",
                         "--model", f"tiny={student}", "--out", str(out), "--folds", "2",
                         "--restarts", "1", "--iterations", "10"]) == 0
    assert "uniform ensemble" in capsys.readouterr().out
    blob = json.loads((out / "acp.json").read_text())
    assert set(blob["weights"]) == {"logmel-stats", "tiny"}
    assert abs(sum(blob["weights"].values()) - 1.0) < 1e-9
