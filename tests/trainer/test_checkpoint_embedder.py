"""A finished run directory becomes an Embedder; damaged runs fail with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_fixtures import REPO, make_tree, tone

from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.errors import ConfigError
from trainer.checkpoint_embedder import load_checkpoint_embedder
from trainer.cli import main
from trainer.embedder_factory import make_embedder
from trainer.errors import CheckpointError


def _finetune(tree: Path, out: Path, cache: Path, recipe: str) -> Path:
    argv = [
        "finetune",
        "--recipe",
        str(REPO / "conf" / "train" / f"tiny_{recipe}.yaml"),
        "--data",
        str(tree),
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--no-progress",
    ]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ckpt")
    return _finetune(make_tree(base / "data"), base / "run", base / "cache", "full")


def test_run_directory_is_an_embedder(run_dir) -> None:
    embedder = load_checkpoint_embedder(run_dir)
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.sample_rate_hz, embedder.window_s, embedder.dim) == (
        "finetuned:tiny_full",
        16000,
        10.0,
        8,
    )
    audio = tone(1.0, 220.0, 3)
    vector = embedder.embed(audio)
    assert vector.shape == (8,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(vector, embedder.embed(audio))
    batch = embedder.embed_batch(torch.from_numpy(np.stack([audio, audio])))
    np.testing.assert_allclose(batch[0], vector, atol=1e-5)
    assert embedder.identity and len(embedder.identity) == 64
    long = embedder.embed(np.tile(audio, 35))  # over MAX_CHUNK_S: embedded in chunks
    assert long.shape == (8,) and np.isfinite(long).all()


def test_run_directory_holds_plain_data_only(run_dir) -> None:
    content = torch.load(run_dir / "model.pt", weights_only=True)
    assert set(content) == {"backbone", "heads"} and set(content["heads"]) == {"head"}
    meta = json.loads((run_dir / "embedder.json").read_text())
    assert meta["backbone"]["name"] == "resnet" and meta["backbone"]["size"]["dim"] == 64
    assert json.loads((run_dir / "classes.json").read_text())["head"][0].startswith("ToyFan/")


def test_embedder_factory_loads_the_run(run_dir) -> None:
    embedder = make_embedder(None, run_dir)
    assert embedder.name == "finetuned:tiny_full"
    with pytest.raises(ConfigError, match="does not match"):
        make_embedder("logmel-stats", run_dir)


def test_damaged_runs_are_refused(run_dir, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(ConfigError, match=r"no embedder\.json"):
        load_checkpoint_embedder(broken)
    with pytest.raises(ConfigError, match="run directory"):
        load_checkpoint_embedder(tmp_path / "missing")
    for name in ("embedder.json", "classes.json", "recipe.yaml"):
        (broken / name).write_bytes((run_dir / name).read_bytes())
    content = torch.load(run_dir / "model.pt", weights_only=True)
    del content["backbone"]["projection.bias"]
    torch.save(content, broken / "model.pt")
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \[projection\.bias\]"):
        load_checkpoint_embedder(broken)
    meta = json.loads((run_dir / "embedder.json").read_text())
    (broken / "embedder.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint_embedder(broken)


def test_dual_head_run_concatenates_both_heads(tmp_path) -> None:
    run = _finetune(make_tree(tmp_path / "data"), tmp_path / "run", tmp_path / "cache", "dual_head")
    embedder = load_checkpoint_embedder(run)
    assert embedder.dim == 16
    vector = embedder.embed(tone(1.0, 440.0, 5))
    assert vector.shape == (16,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
