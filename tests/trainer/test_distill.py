"""Distillation: the student learns the teachers' geometry; runs are decoupled by teachers.npz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from edge_monitor.core.preprocess import PreprocessConfig
from trainer.cli import main as trainer_main
from trainer.distill import (
    DistillSettings,
    TeacherTargets,
    distillation_loss,
    log_mel_features,
    train_student,
)
from trainer.student import build_student, load_student, parameter_count

TINY = {"window_s": 1.0, "n_fft": 256, "hop": 128, "n_mels": 16, "channels": [8, 16]}


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(4)
    t = np.arange(16000) / 16000
    plan = [("train", "source", "normal", 12), ("train", "target", "normal", 3),
            ("test", "source", "normal", 3), ("test", "source", "anomaly", 3),
            ("test", "target", "normal", 3), ("test", "target", "anomaly", 3)]
    for split, domain, label, count in plan:
        for i in range(count):
            hum = rng.uniform(100, 400) if domain == "source" else rng.uniform(500, 700)
            audio = 0.1 * np.sin(2 * np.pi * hum * t) + 0.02 * rng.normal(size=t.size)
            if label == "anomaly":
                audio += 0.08 * np.sin(2 * np.pi * 3500 * t)
            path = root / "valve" / split / f"section_00_{domain}_{split}_{label}_{i:04d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, audio.astype(np.float32), 16000)
    return root


def test_default_student_fits_the_edge_budget() -> None:
    assert parameter_count(build_student()) < 10_000_000


def test_loss_is_zero_on_the_target_and_positive_elsewhere() -> None:
    target = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    assert float(distillation_loss(target, target, 1.0)) < 1e-6
    other = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    assert float(distillation_loss(other, target, 1.0)) > 0.1


def test_student_learns_the_teacher_targets(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data")
    paths = sorted((data / "valve" / "train").glob("*.wav"))
    rng = np.random.default_rng(0)
    teacher = TeacherTargets([str(p) for p in paths], ["a", "b"], np.array([0.5, 0.5]),
                             [rng.normal(size=(len(paths), 4)), rng.normal(size=(len(paths), 3))])
    targets = teacher.targets()
    assert np.allclose(np.linalg.norm(targets, axis=1), 1.0)
    torch.manual_seed(0)
    model = build_student({**TINY, "dim": 7})
    features = log_mel_features(model, paths, PreprocessConfig())

    def mean_cosine() -> float:
        with torch.no_grad():
            student = model.embed_features(torch.stack(features)).numpy()
        return float(np.mean(np.sum(student * targets, axis=1)))

    before = mean_cosine()
    history = train_student(model, features, targets,
                            DistillSettings(epochs=25, batch_size=8, lr=5e-3, crop_s=1.0,
                                            threads=1))
    assert history[-1] < history[0]
    assert mean_cosine() > before + 0.2


def test_distill_cli_trains_evaluates_and_reuses_teachers(tmp_path: Path, capsys) -> None:
    data = _tree(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--data", str(data), "--channels", "4,8", "--n-mels", "16", "--epochs", "2",
              "--batch-size", "8", "--crop-s", "1.0", "--threads", "1"]
    assert trainer_main(["distill", *common, "--teacher", "logmel-stats", "--out",
                         str(out)]) == 0
    assert "student (" in capsys.readouterr().out
    figures = json.loads((out / "distill.json").read_text())
    assert np.isfinite(figures["student_hmean"]) and figures["teachers"] == {"logmel-stats": 1.0}
    student = load_student(out / "student.pt")
    assert student.config.dim == 256
    again = tmp_path / "again"
    assert trainer_main(["distill", *common, "--teacher-embeddings",
                         str(out / "teachers.npz"), "--out", str(again)]) == 0
    assert (again / "student.pt").is_file()
