"""`edge-trainer eval` end to end on a tiny generated DCASE tree, and its building blocks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_monitor.core.errors import ConfigError, DatasetError
from edge_monitor.core.scoring_config import VARIANTS
from trainer.cli import main
from trainer.dcase_data import Clip
from trainer.embed_cache import CROP_CENTER, crop_audio
from trainer.embedder_factory import make_embedder
from trainer.evaluate import evaluate_embeddings

RATE_HZ = 16000
CLIP_S = 1.0


def _clip(rng: np.random.Generator, hum_hz: float, fault: bool) -> np.ndarray:
    """A hum with harmonics in noise; a fault adds a loud high whistle."""
    t = np.arange(int(CLIP_S * RATE_HZ)) / RATE_HZ
    hum = sum(np.sin(2 * np.pi * hum_hz * h * t + rng.uniform(0, 6)) / h for h in (1, 2, 3))
    audio = 0.1 * hum + 0.02 * rng.normal(size=t.size)
    if fault:
        audio += 0.1 * np.sin(2 * np.pi * 5200 * t)
    return (audio * rng.uniform(0.5, 1.5)).astype(np.float32)


def _tree(root: Path) -> None:
    rng = np.random.default_rng(7)
    hum = {"source": 120.0, "target": 155.0}  # the domain shift: another running speed
    # Ten target training clips, as DCASE gives: with fewer than k_rho + 1 of them, DADS
    # densities and synthesis reach across the domain gap (see the evaluation note).
    plan = [
        ("train", "source", "normal", 16), ("train", "target", "normal", 10),
        ("test", "source", "normal", 5), ("test", "source", "anomaly", 5),
        ("test", "target", "normal", 5), ("test", "target", "anomaly", 5),
    ]
    for split, domain, label, count in plan:
        for i in range(count):
            name = f"section_00_{domain}_{split}_{label}_{i:04d}_spd_{int(hum[domain])}.wav"
            audio = _clip(rng, hum[domain] * rng.uniform(0.98, 1.02), label == "anomaly")
            path = root / "fan" / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, audio, RATE_HZ)
    # Unlabelled evaluation clips are scored and written, but carry no metric.
    sf.write(root / "fan" / "test" / "section_00_0000.wav", _clip(rng, 120.0, False), RATE_HZ)


def test_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "data")
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["eval", "--data", str(tmp_path / "data"), "--out", str(out), "--cache", str(cache),
            "--no-progress"]
    assert main([*argv, "--plots"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in VARIANTS)
    for name in VARIANTS:
        for kind in ("anomaly_score", "decision_result"):
            rows = list(csv.reader((out / name / f"{kind}_fan_section_00_test.csv").open()))
            assert len(rows) == 21 and rows[0][0].startswith("section_00_")
        assert (out / name / "hist_fan_section_00.png").stat().st_size > 1000
    assert (out / "plots" / "roc_fan_section_00.png").stat().st_size > 1000
    results = list(csv.DictReader((out / "results.csv").open()))
    assert [r["machine"] for r in results] == ["fan", "overall"] * len(VARIANTS)
    for row in results:
        for key in ("auc_source", "auc_target", "pauc", "hmean"):
            assert float(row[key]) > 0.9, row
    # A second run reuses every cached embedding and gives the same numbers.
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == 47
    stamps = [p.stat().st_mtime_ns for p in entries]
    assert main(argv) == 0
    assert [p.stat().st_mtime_ns for p in entries] == stamps
    assert list(csv.DictReader((out / "results.csv").open())) == results


def test_eval_rejects_bad_options(tmp_path: Path) -> None:
    base = ["eval", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--variants", "knn,nearest"]) == 2
    assert main([*base, "--variants", "knn", "--alpha", "1"]) == 2
    assert main([*base, "--false-alarm-rate", "1.5"]) == 2
    assert main([*base, "--embedder", "nope"]) == 2  # the empty tree fails first or the name
    assert main(base) == 2  # no machine directories


def test_make_embedder_choices(tmp_path: Path) -> None:
    assert make_embedder().name == "logmel-stats"
    with pytest.raises(ConfigError, match="logmel-stats"):
        make_embedder("beats-large")
    with pytest.raises(ConfigError, match="no such file"):
        make_embedder(None, tmp_path / "missing.pt")


def test_center_crop_is_one_daemon_window() -> None:
    audio = np.arange(12 * 100, dtype=np.float32)
    cropped = crop_audio(audio, 100, CROP_CENTER)
    assert cropped.shape == (1000,) and cropped[0] == 100
    assert crop_audio(audio[:500], 100, CROP_CENTER).shape == (500,)


def _clips(domains: list[str], split: str, labels: list[str]) -> list[Clip]:
    return [
        Clip(Path(f"c{i}.wav"), "m", "00", split, d, lab, i)
        for i, (d, lab) in enumerate(zip(domains, labels, strict=True))
    ]


def test_evaluate_embeddings_on_constructed_vectors() -> None:
    rng = np.random.default_rng(0)
    source, target, fault = np.eye(8)[0], np.eye(8)[1], np.eye(8)[2]

    def around(centre: np.ndarray, n: int) -> np.ndarray:
        return centre + 0.05 * rng.normal(size=(n, 8))

    train = np.vstack([around(source, 30), around(target, 3)])
    train_clips = _clips(["source"] * 30 + ["target"] * 3, "train", ["normal"] * 33)
    test = np.vstack([around(source, 4), around(target, 4), around(fault, 4)])
    test_clips = _clips(["source"] * 4 + ["target"] * 4 + ["source", "target"] * 2, "test",
                        ["normal"] * 8 + ["anomaly"] * 4)
    result = evaluate_embeddings(train_clips, train, test_clips, test, VARIANTS)
    for name in VARIANTS:
        assert result.overall(name).hmean == 1.0
    with pytest.raises(DatasetError, match="no training clips"):
        other = [Clip(Path("x.wav"), "m", "07", "test", "source", "normal", 0)]
        evaluate_embeddings(train_clips, train, other, test[:1], VARIANTS)
