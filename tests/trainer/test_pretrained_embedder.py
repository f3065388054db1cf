"""A pretrained release file used frozen: pooling specs, width detection, export parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge_monitor.core.embedders.onnx_model import OnnxEmbedder
from edge_monitor.core.errors import ConfigError
from trainer.backbones import build_backbone
from trainer.embedder_factory import make_embedder
from trainer.errors import CheckpointError
from trainer.export import export_onnx
from trainer.pretrained_embedder import load_pretrained_embedder, parse_pooling, release_size


@pytest.fixture(scope="module")
def release_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mn01-shaped file in the release's plain state-dict format (random weights)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mn01_as.pt"
    torch.save(build_backbone("efficientat", "mn01").state_dict(), path)
    return path


def test_pooling_spec_parses_and_names_bad_parts() -> None:
    parts = parse_pooling("16:mean+max, 12:mean")
    assert [(p.layer, p.stats) for p in parts] == [(16, ("mean", "max")), (12, ("mean",))]
    for bad in ("16:median", "x:mean", "16", "40:mean", "16:mean,,12:max"):
        with pytest.raises(ConfigError, match="pooling"):
            parse_pooling(bad)


def test_width_is_read_from_the_weights(release_file: Path, tmp_path: Path) -> None:
    assert release_size(torch.load(release_file, weights_only=True), release_file) == "mn01"
    junk = {"features.16.0.weight": torch.zeros(3, 3, 1, 1)}
    with pytest.raises(CheckpointError, match="not an EfficientAT release"):
        release_size(junk, tmp_path / "junk.pt")


def test_frozen_embedder_has_the_pooled_dim_and_exports_exactly(
    release_file: Path, tmp_path: Path
) -> None:
    embedder = load_pretrained_embedder(release_file, "16:mean+max,12:mean")
    backbone = embedder.module.backbone
    assert embedder.dim == 2 * backbone.dim + backbone.layer_channels[12]
    assert embedder.sample_rate_hz == 32000
    wave = (np.random.default_rng(0).standard_normal(32000 * 12) * 0.1).astype(np.float32)
    vector = embedder.embed(wave)
    assert vector.shape == (embedder.dim,) and np.isclose(np.linalg.norm(vector), 1.0)
    path = export_onnx(embedder, tmp_path / "frozen.onnx")
    runtime = OnnxEmbedder(path, "frozen", 32000, 10.0, embedder.dim)
    for samples in (32000 * 10, 32000 * 12 - 123):  # the daemon's window, a whole DCASE clip
        clip = wave[:samples]
        assert float(runtime.embed(clip) @ embedder.embed(clip)) > 0.9999


def test_make_embedder_takes_a_release_file_and_refuses_other_files(
    release_file: Path, tmp_path: Path
) -> None:
    assert make_embedder(checkpoint=release_file, pooling="16:mean").dim == 96
    other = tmp_path / "notes.pt"
    torch.save({"cfg": {}, "model": {}}, other)
    with pytest.raises(ConfigError, match="EfficientAT release state dict"):
        make_embedder(checkpoint=other)
    with pytest.raises(ConfigError, match="--pooling applies to a pretrained release file"):
        make_embedder(checkpoint=tmp_path, pooling="16:mean")


def test_int8_keeps_front_end_stem_and_depthwise_convolutions_float(
    release_file: Path, tmp_path: Path
) -> None:
    import onnx

    from trainer.quantize import float_nodes, front_end_nodes, quantize_onnx

    embedder = load_pretrained_embedder(release_file, "16:mean")
    source = export_onnx(embedder, tmp_path / "frozen.onnx")
    model = onnx.load(str(source))
    kept = set(float_nodes(model))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = {n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)}
    assert len(depthwise) == 15 and depthwise <= kept
    assert convs[0].name in kept and set(front_end_nodes(model)) <= kept
    target = quantize_onnx(source, tmp_path / "frozen.int8.onnx", "dynamic")
    runtime = OnnxEmbedder(target, "int8", 32000, 10.0, embedder.dim)
    wave = (np.random.default_rng(3).standard_normal(32000 * 10) * 0.1).astype(np.float32)
    assert float(runtime.embed(wave) @ embedder.embed(wave)) > 0.95
