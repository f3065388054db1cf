"""Tiny DCASE trees of synthetic machine sounds and recipe helpers for the fine-tuning tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import yaml

from trainer.recipe import Recipe, parse_recipe
from trainer.strategies import Strategy, StrategyContext, build_strategy

REPO = Path(__file__).resolve().parents[2]
RATE = 16000


def tone(seconds: float, freq: float, seed: int, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def make_tree(
    root: Path,
    machine: str = "ToyFan",
    per_class: int = 3,
    seconds: float = 1.0,
    with_attributes: bool = True,
) -> Path:
    """root/<machine>/train with 2 speeds x `per_class` source clips (+1 target) and test clips."""
    train = root / machine / "train"
    test = root / machine / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    index = 0
    for speed, freq in (("10", 220.0), ("20", 440.0)):
        for _ in range(per_class):
            index += 1
            attrs = f"_spd_{speed}" if with_attributes else ""
            name = f"section_00_source_train_normal_{index:04d}{attrs}.wav"
            sf.write(train / name, tone(seconds, freq, index), RATE)
    sf.write(
        train / "section_00_target_train_normal_0100_spd_30.wav", tone(seconds, 660.0, 99), RATE
    )
    for i, (label, freq) in enumerate((("normal", 220.0), ("anomaly", 1000.0))):
        sf.write(
            test / f"section_00_source_test_{label}_{i:04d}_spd_10.wav",
            tone(seconds, freq, 200 + i),
            RATE,
        )
    return root


def tiny_recipe(name: str, **overrides: Any) -> Recipe:
    """conf/train/tiny_<name>.yaml, with top-level sections replaced or updated."""
    values = yaml.safe_load((REPO / "conf" / "train" / f"tiny_{name}.yaml").read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return parse_recipe(values, f"tiny_{name}")


def seeded_strategy(recipe: Recipe, roots: list[Path], cache: Path) -> Strategy:
    """The recipe's strategy built with torch's seed fixed, so initial weights repeat."""
    torch.manual_seed(0)
    return build_strategy(StrategyContext(recipe, roots, cache))
