"""Export: tiny models through ONNX (fp32, INT8) and TFLite match torch; the CLI checks itself."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_monitor.cli import main as monitor_main
from edge_monitor.core.bundle import load_bundle
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.embedders.onnx_model import OnnxEmbedder
from trainer.cli import main as trainer_main
from trainer.export import LogMelStatsModule, export_onnx
from trainer.quantize import front_end_nodes, int8_weights_only, quantize_onnx
from trainer.student import build_student, save_student, student_embedder

RATE_HZ = 16000
TINY = {"window_s": 1.0, "n_fft": 256, "hop": 128, "n_mels": 16, "channels": [4, 8], "dim": 8}


def _clips(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(RATE_HZ) / RATE_HZ
    return [(0.1 * np.sin(2 * np.pi * rng.uniform(100, 900) * t)
             + 0.03 * rng.normal(size=t.size)).astype(np.float32) for _ in range(count)]


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(5)
    t = np.arange(RATE_HZ) / RATE_HZ
    plan = [("train", "source", "normal", 10), ("train", "target", "normal", 2),
            ("test", "source", "normal", 3), ("test", "source", "anomaly", 3),
            ("test", "target", "normal", 3), ("test", "target", "anomaly", 3)]
    for split, domain, label, count in plan:
        for i in range(count):
            hum = (150.0 if domain == "source" else 190.0) * rng.uniform(0.97, 1.03)
            audio = 0.1 * np.sin(2 * np.pi * hum * t) + 0.02 * rng.normal(size=t.size)
            if label == "anomaly":
                audio += 0.1 * np.sin(2 * np.pi * 4100 * t)
            path = root / "pump" / split / f"section_00_{domain}_{split}_{label}_{i:04d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, audio.astype(np.float32), RATE_HZ)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = build_student(TINY).eval()
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    embedder = student_embedder(model, "tiny")
    export_onnx(embedder, path)
    return embedder, path


def test_logmel_stats_graph_matches_the_numpy_embedder() -> None:
    numpy_embedder = LogMelStatsEmbedder()
    module = LogMelStatsModule(numpy_embedder).eval()
    for clip in _clips(3):
        expected = numpy_embedder.embed(clip)
        got = module(torch.from_numpy(clip)[None, :])[0].detach().numpy()
        assert float(got @ expected) > 0.99999


def test_onnx_fp32_matches_torch_at_any_length(tiny) -> None:
    embedder, path = tiny
    runtime = OnnxEmbedder(path, "tiny", RATE_HZ, 1.0, 8, providers=["cuda", "cpu"], threads=1)
    assert runtime.providers == ["CPUExecutionProvider"]  # cuda is absent: fell back to CPU
    for clip in _clips(3):
        for audio in (clip, np.tile(clip, 3)[: int(2.5 * RATE_HZ)]):
            np.testing.assert_allclose(runtime.embed(audio), embedder.embed(audio), atol=2e-5)


@pytest.mark.parametrize("mode", ["dynamic", "static", "weights"])
def test_onnx_int8_stays_close_and_keeps_front_end_float(tiny, tmp_path: Path, mode: str) -> None:
    import onnx

    embedder, path = tiny
    target = quantize_onnx(path, tmp_path / f"tiny.{mode}.onnx", mode, _clips(4, seed=1))
    quantised = onnx.load(str(target))
    kinds = {n.op_type for n in quantised.graph.node}
    assert kinds & {"ConvInteger", "MatMulInteger", "QuantizeLinear", "DynamicQuantizeLinear"} or (
        mode == "weights" and "DequantizeLinear" in kinds and "QuantizeLinear" not in kinds
    )
    assert len(front_end_nodes(quantised)) >= len(front_end_nodes(onnx.load(str(path))))
    runtime = OnnxEmbedder(target, "tiny", RATE_HZ, 1.0, 8)
    cosines = [float(runtime.embed(c) @ embedder.embed(c)) for c in _clips(4, seed=2)]
    assert min(cosines) > 0.98


@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None,
                    reason="litert-torch (the optional tflite-export extra) is not installed")
@pytest.mark.parametrize("int8", [False, True])
def test_tflite_matches_torch(tiny, tmp_path: Path, int8: bool) -> None:
    from edge_monitor.core.embedders.tflite_model import TfliteEmbedder
    from trainer.export import export_tflite

    embedder, _ = tiny
    path = export_tflite(embedder, tmp_path / "tiny.tflite", int8_weights=int8)
    runtime = TfliteEmbedder(path, "tiny", RATE_HZ, 1.0, 8, threads=1)
    cosines = [float(runtime.embed(c) @ embedder.embed(c)) for c in _clips(4, seed=3)]
    assert min(cosines) > (0.98 if int8 else 0.99999)


def _export_student(tmp_path: Path, *options: str) -> tuple[Path, Path]:
    """A tiny student exported by the CLI with `options`; returns (data tree, export dir)."""
    data = _tree(tmp_path / "data")
    torch.manual_seed(1)
    student = save_student(build_student(TINY), tmp_path / "student.pt")
    out = tmp_path / "exports"
    assert trainer_main(["export", "--student", str(student), "--out", str(out), "--data",
                         str(data), *options]) == 0
    return data, out


def test_export_and_bundle_cli_end_to_end(tmp_path: Path, capsys) -> None:
    data, out = _export_student(
        tmp_path, "--formats", "onnx,onnx-int8", "--int8", "static", "--calibration", "4"
    )
    printed = capsys.readouterr().out
    assert "student (onnx, fp32): cosine to torch" in printed and "hmean" in printed
    listed = json.loads((out / "export.json").read_text())["models"]
    assert [m["name"] for m in listed] == ["student", "student-onnx-int8"]
    assert listed[0]["check"]["cosine_min"] > 0.9999
    bundle = tmp_path / "bundle"
    capsys.readouterr()
    assert trainer_main(["bundle", "--data", str(data), "--out", str(bundle), "--model",
                         f"{out / 'export.json'}:student", "--k", "2", "--tar"]) == 0
    figures = capsys.readouterr().out
    assert re.search(r"test clips \(12\): hmean \d+\.\d \[\d+\.\d, \d+\.\d\] %", figures), figures
    scores = tmp_path / "scores.csv"
    assert monitor_main(["score", "--bundle", str(bundle) + ".tar", "--out", str(scores),
                         str(data / "pump" / "test")]) == 0
    with open(scores) as handle:
        rows = list(csv.reader(handle))[1:]
    assert len(rows) == 12 and all(np.isfinite(float(s)) for _, s in rows)
    # The same export as a model-only bundle: no banks, a box learns its own.
    model_only = tmp_path / "model-only"
    spec = f"{out / 'export.json'}:student-onnx-int8"
    capsys.readouterr()
    assert trainer_main(["bundle", "--model-only", "--data", str(data), "--out",
                         str(model_only), "--model", spec]) == 2
    assert "['--data'] shape banks, and --model-only builds none" in capsys.readouterr().err
    assert trainer_main(["bundle", "--model-only", "--out", str(model_only), "--model",
                         spec]) == 0
    loaded = load_bundle(model_only)
    assert loaded.banks == {} and loaded.manifest.learns("pump")
    assert loaded.manifest.models["student-onnx-int8"].precision == "int8"


def test_export_stores_int8_weights_by_default(tmp_path: Path, capsys) -> None:
    import onnx

    _, out = _export_student(tmp_path, "--formats", "onnx-int8")
    assert "student-onnx-int8 (onnx, int8-weights): cosine to torch" in capsys.readouterr().out
    (entry,) = json.loads((out / "export.json").read_text())["models"]
    assert entry["precision"] == "int8-weights" and entry["check"]["cosine_min"] > 0.99
    kinds = {n.op_type for n in onnx.load(str(out / entry["file"])).graph.node}
    assert "DequantizeLinear" in kinds and "QuantizeLinear" not in kinds


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    op=st.sampled_from(["Conv", "Gemm", "GemmT", "MatMul"]),
    out_channels=st.integers(1, 6),
    zero_channel=st.booleans(),
)
def test_int8_weights_round_each_channel_to_its_own_scale(seed, op, out_channels, zero_channel):
    """Each output channel keeps its own scale (max |w| / 127): every weight comes back within
    half a step, an all-zero channel stays zero, and the graph computes what it did."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    k = 5
    if op == "Conv":
        weight = rng.normal(size=(out_channels, 2, 3)).astype(np.float32)
        x_shape, node = [1, 2, 8], helper.make_node("Conv", ["x", "w"], ["y"], name="n")
        y_shape = [1, out_channels, 6]
        axis = 0
    elif op == "MatMul":
        weight = rng.normal(size=(k, out_channels)).astype(np.float32)
        x_shape, node = [3, k], helper.make_node("MatMul", ["x", "w"], ["y"], name="n")
        y_shape = [3, out_channels]
        axis = 1
    else:
        trans = op == "GemmT"
        weight = rng.normal(size=(out_channels, k) if trans else (k, out_channels))
        weight = (weight * rng.uniform(0.01, 100)).astype(np.float32)
        x_shape, y_shape = [3, k], [3, out_channels]
        node = helper.make_node("Gemm", ["x", "w"], ["y"], name="n", transB=int(trans))
        axis = 0 if trans else 1
    if zero_channel:
        np.moveaxis(weight, axis, 0)[0] = 0.0
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=x_shape).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    quantised = int8_weights_only(model, excluded=set())
    onnx.checker.check_model(quantised)
    stored = {t.name: numpy_helper.to_array(t) for t in quantised.graph.initializer}
    assert "w" not in stored and stored["w_int8"].dtype == np.int8
    scale = stored["w_scale"]
    assert scale.shape == (out_channels,)
    shape = [1] * weight.ndim
    shape[axis] = -1
    restored = stored["w_int8"].astype(np.float32) * scale.reshape(shape)
    assert np.all(np.abs(restored - weight) <= scale.reshape(shape) / 2 + 1e-6)
    if zero_channel:
        assert not np.moveaxis(restored, axis, 0)[0].any()
    after = ort.InferenceSession(quantised.SerializeToString()).run(None, {"x": x})[0]
    bound = np.abs(x).sum() * float(scale.max()) / 2 + 1e-4
    assert np.max(np.abs(after - before)) <= bound
