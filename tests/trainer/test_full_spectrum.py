"""The full-spectrum branch: its spectrum, its config errors, training, a run that reloads, and
an ONNX graph that matches torch at any input length."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml
from finetune_fixtures import REPO, make_tree, seeded_strategy, tiny_recipe, tone
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_monitor.core.embedders.onnx_model import OnnxEmbedder
from edge_monitor.core.errors import ConfigError
from trainer.backbones import build_backbone
from trainer.backbones.full_spectrum import (
    FullSpectrumBranch,
    FullSpectrumConfig,
    FullSpectrumFusion,
)
from trainer.checkpoint_embedder import load_checkpoint_embedder
from trainer.cli import main as trainer_main
from trainer.export import export_onnx, export_tflite, torch_embedder_for
from trainer.quantize import float_nodes, front_end_nodes, quantize_onnx
from trainer.train_loop import Trainer

RATE_HZ = 32000
SMALL = {"segment": 4096, "channels": [4, 8], "first_kernel": 16, "kernel": 5, "dim": 8}
BACKBONE = {"name": "efficientat", "size": "tiny", "full_spectrum": SMALL}


def test_a_tone_lands_in_its_bin_at_any_length() -> None:
    branch = FullSpectrumBranch(FullSpectrumConfig(), RATE_HZ)
    assert branch.bins == 4097  # 0 .. 8000 Hz at 32000 / 16384 = 1.95 Hz a bin
    t = np.arange(3 * RATE_HZ) / RATE_HZ
    for seconds in (0.2, 3.0):  # shorter than one segment is zero-padded to one
        wave = np.sin(2 * np.pi * 1000.0 * t[: int(seconds * RATE_HZ)]).astype(np.float32)
        spectrum = branch.log_spectrum(torch.from_numpy(wave)[None])[0]
        assert spectrum.shape == (4097,)
        assert int(spectrum.argmax()) == 512  # 1000 Hz * 16384 / 32000


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"segment": 1000}, "power of two"),
        ({"channels": []}, "channels"),
        ({"dims": 8}, "dims"),
        ({"high_hz": -1}, "high_hz"),
    ],
)
def test_bad_branch_configs_name_the_field(values: dict, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        build_backbone("efficientat", "tiny", None, values)
    with pytest.raises(ConfigError, match=f"full_spectrum.*{names}"):
        tiny_recipe("full", backbone={**BACKBONE, "full_spectrum": values})


def test_every_frame_carries_the_branch_vector() -> None:
    torch.manual_seed(0)
    fused = build_backbone("efficientat", "tiny", None, SMALL).eval()
    plain = build_backbone("efficientat", "tiny").eval()
    assert fused.dim == plain.dim + 8 and fused.sample_rate_hz == RATE_HZ
    frames = fused(torch.randn(2, RATE_HZ))
    assert frames.shape[-1] == fused.dim
    tail = frames[:, :, plain.dim:]
    assert torch.equal(tail, tail[:, :1].expand_as(tail))
    assert not torch.equal(tail[0], tail[1])


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("data"))


def test_training_moves_the_branch_and_the_spectrogram(tree: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe("full", backbone=BACKBONE)
    strategy = seeded_strategy(recipe, [tree], tmp_path / "cache")
    before = {k: v.clone() for k, v in strategy.modules.state_dict().items()}
    Trainer(strategy, recipe, tmp_path / "run", torch.device("cpu")).run(progress=False)
    moved = {k for k, v in strategy.modules.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("backbone.full_spectrum.convs.") for k in moved)
    assert any(k.startswith("backbone.spectrogram.features.") for k in moved)


@pytest.fixture(scope="module")
def run(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fullspec")
    values = yaml.safe_load((REPO / "conf" / "train" / "tiny_full.yaml").read_text())
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**values, "backbone": BACKBONE}))
    argv = ["finetune", "--recipe", str(recipe), "--data", str(tree), "--out", str(base / "run"),
            "--cache", str(base / "cache"), "--no-progress"]
    assert trainer_main(argv) == 0
    return base / "run"


def test_the_run_stores_the_branch_and_reloads_it(run: Path) -> None:
    meta = json.loads((run / "embedder.json").read_text())
    assert meta["backbone"]["size"]["full_spectrum"]["segment"] == 4096
    embedder = load_checkpoint_embedder(run)
    assert isinstance(embedder.backbone, FullSpectrumFusion)
    saved = torch.load(run / "model.pt", weights_only=True)["backbone"]
    loaded = embedder.backbone.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    vector = embedder.embed(tone(1.0, 220.0, 3))
    assert vector.shape == (8,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_onnx_graph_matches_torch_at_any_length(run: Path, tmp_path: Path) -> None:
    embedder = torch_embedder_for(load_checkpoint_embedder(run))
    path = export_onnx(embedder, tmp_path / "fullspec.onnx")
    graph = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runtime = OnnxEmbedder(path, "fullspec", RATE_HZ, 10.0, 8, threads=1)
    rng = np.random.default_rng(1)
    for seconds in (0.3, 2.5, 10.0, 12.5):
        audio = (0.1 * rng.standard_normal(int(seconds * RATE_HZ))).astype(np.float32)
        got = graph.run(None, {"wave": audio[None]})[0][0]
        np.testing.assert_allclose(got, embedder.embed(audio), atol=5e-5)
        if seconds >= 10.0:  # the daemon's runtime: a whole window or more, as it is
            np.testing.assert_allclose(runtime.embed(audio), embedder.embed(audio), atol=5e-5)


def test_tflite_export_is_refused_with_the_way_out(
    run: Path, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    embedder = torch_embedder_for(load_checkpoint_embedder(run))
    with pytest.raises(ConfigError, match=r"full-spectrum branch.*--formats onnx"):
        export_tflite(embedder, tmp_path / "x.tflite")
    out = tmp_path / "export"
    argv = ["export", "--checkpoint", str(run), "--formats", "onnx,tflite", "--data", str(tree),
            "--out", str(out)]
    assert trainer_main(argv) == 2  # refused before any export work: nothing written
    assert "--formats onnx or onnx-int8" in capsys.readouterr().err and not out.exists()


def test_feature_exchange_trains_on_pair_classes(tree: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe("feature_exchange")
    strategy = seeded_strategy(recipe, [tree], tmp_path / "cache")
    classes = len(strategy.classes)
    assert strategy.modules["loss"].classes == classes * classes
    frames = strategy.backbone(torch.randn(3, RATE_HZ))
    order = np.array([2, 0, 1])
    swapped = strategy.exchange(frames, order)
    split = strategy.backbone.spectrogram.dim
    assert torch.equal(swapped[..., :split], frames[..., :split])
    assert torch.equal(swapped[..., split:], frames[order][..., split:])
    pairs = strategy.pair_targets(torch.tensor([0, 1]), torch.tensor([2, 1]))
    assert pairs.tolist() == [2, classes + 1]
    before = {k: v.clone() for k, v in strategy.modules.state_dict().items()}
    Trainer(strategy, recipe, tmp_path / "run", torch.device("cpu")).run(progress=False)
    moved = {k for k, v in strategy.modules.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("backbone.full_spectrum.") for k in moved)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any("loss_exchange" in row for row in logged)


def test_feature_exchange_without_a_branch_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"feature-exchange.*backbone.full_spectrum"):
        tiny_recipe("feature_exchange", backbone={"full_spectrum": None})


def test_feature_exchange_with_multi_task_heads_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"feature-exchange.*remove data\.tasks"):
        tiny_recipe("feature_exchange", data={"tasks": ["combined", "spd"]})


def test_int8_keeps_both_front_ends_and_their_first_convolutions_float(
    run: Path, tmp_path: Path
) -> None:
    embedder = torch_embedder_for(load_checkpoint_embedder(run))
    path = export_onnx(embedder, tmp_path / "fullspec.onnx")
    model = onnx.load(str(path))
    logs = [n for n in model.graph.node if n.op_type == "Log"]
    assert len(logs) == 2  # the mel front end and the branch's log spectrum
    kept = set(float_nodes(model))
    assert set(front_end_nodes(model)) <= kept
    assert {n.name for n in model.graph.node if n.op_type == "DFT"} <= kept
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for log_node in logs:  # walk to the first convolutions each log reaches
        frontier, convs = list(log_node.output), []
        while frontier and not convs:
            nodes = [c for name in frontier for c in consumers.get(name, [])]
            convs = [n.name for n in nodes if n.op_type == "Conv"]
            frontier = [out for n in nodes for out in n.output]
        assert convs and set(convs) <= kept
    quantised = tmp_path / "fullspec-int8.onnx"
    quantize_onnx(path, quantised, "dynamic")
    graph = onnxruntime.InferenceSession(str(quantised), providers=["CPUExecutionProvider"])
    audio = (0.1 * np.random.default_rng(2).standard_normal(3 * RATE_HZ)).astype(np.float32)
    got = graph.run(None, {"wave": audio[None]})[0][0]
    assert float(got @ embedder.embed(audio)) > 0.9


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=8), st.lists(st.integers(-4, 64), max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["segment", "high_hz", "channels", "first_kernel", "first_stride", "kernel",
                     "dim", "segments"]), _VALUES, max_size=4,
))
def test_any_branch_config_is_accepted_or_refused_by_name(values: dict) -> None:
    try:
        recipe = tiny_recipe("full", backbone={**BACKBONE, "full_spectrum": values})
        backbone = build_backbone("efficientat", "tiny", None, recipe.backbone.full_spectrum)
    except ConfigError as exc:
        assert "full_spectrum" in str(exc)
        return
    frames = backbone.eval()(torch.zeros(1, RATE_HZ // 2))  # an accepted config also runs
    assert frames.shape[-1] == backbone.dim
