"""Window-level banks: windows cut from real files, scored against real banks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_monitor.core.errors import ConfigError
from edge_monitor.core.metrics import section_metrics
from edge_monitor.core.scoring_config import VARIANTS
from trainer.dcase_data import Clip
from trainer.embed_cache import EmbedOptions
from trainer.model_spec import load_embedder
from trainer.window_bank import embed_windows, evaluate_window_level, window_starts

RATE = 16_000


def _clip(tmp: Path, split: str, index: int, anomaly: bool, rng: np.random.Generator) -> Clip:
    """6 s of hum and noise; an anomaly has 0.4 s of loud broadband rattle somewhere."""
    t = np.arange(6 * RATE) / RATE
    audio = 0.1 * np.sin(2 * np.pi * 120 * t) + 0.02 * rng.standard_normal(t.size)
    if anomaly:
        start = int(rng.uniform(0.5, 5.0) * RATE)
        audio[start:start + int(0.4 * RATE)] += 0.3 * rng.standard_normal(int(0.4 * RATE))
    label = "anomaly" if anomaly else "normal"
    path = tmp / f"section_00_source_{split}_{label}_{index:04d}.wav"
    sf.write(path, audio.astype(np.float32), RATE)
    return Clip(path, "toy", "00", split, "source", None if split == "train" else label, index)


def test_window_starts_cover_the_clip_and_refuse_nonsense() -> None:
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(3, 4, 2) == [0]
    with pytest.raises(ConfigError):
        window_starts(10, 0, 2)


def test_short_local_faults_are_found_by_the_window_bank(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = [_clip(tmp_path, "train", i, False, rng) for i in range(12)]
    test = [_clip(tmp_path, "test", 100 + i, i % 2 == 1, rng) for i in range(16)]
    embedder = load_embedder("logmel-stats")
    vectors, starts = embed_windows(train[0].path, embedder, EmbedOptions(), 2.0, 1.0)
    assert vectors.shape == (5, embedder.dim) and starts.tolist() == [0, 1, 2, 3, 4]
    scores = evaluate_window_level(embedder, train, test, {"knn": VARIANTS["knn"]}, 2.0, 1.0)
    assert set(scores) == {"knn max", "knn mean"}
    is_anomaly = np.array([c.is_anomaly for c in test])
    auc = section_metrics(scores["knn max"], is_anomaly, ["source"] * len(test)).auc_source
    assert auc > 0.9
