"""OnnxEmbedder: real onnxruntime sessions over small waveform-in graphs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_monitor.core.embedders.fit_length import fixed_length_windows
from edge_monitor.core.embedders.onnx_model import OnnxEmbedder, resolve_providers
from edge_monitor.core.errors import BundleError, ConfigError

FRAME = 160
DIM = 6


def _model(path: Path, samples: int | str = "samples", dim: int = DIM) -> Path:
    """wave [1, samples] -> framed projection -> |.| -> mean over frames -> [1, dim]."""
    kernel = np.random.default_rng(1).normal(size=(dim, 1, FRAME)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["wave", "axis"], ["x"]),
            helper.make_node("Conv", ["x", "kernel"], ["frames"], strides=[FRAME]),
            helper.make_node("Abs", ["frames"], ["mag"]),
            helper.make_node("ReduceMean", ["mag", "time"], ["embedding"], keepdims=0),
        ],
        "frames",
        [helper.make_tensor_value_info("wave", TensorProto.FLOAT, [1, samples])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, dim])],
        [numpy_helper.from_array(kernel, "kernel"),
         numpy_helper.from_array(np.array([1], np.int64), "axis"),
         numpy_helper.from_array(np.array([2], np.int64), "time")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def _reference(audio: np.ndarray) -> np.ndarray:
    kernel = np.random.default_rng(1).normal(size=(DIM, 1, FRAME)).astype(np.float32)
    frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME)
    vector = np.abs(frames @ kernel[:, 0, :].T).mean(axis=0)
    return vector / np.linalg.norm(vector)


def test_dynamic_model_embeds_the_whole_clip(tmp_path: Path) -> None:
    embedder = OnnxEmbedder(_model(tmp_path / "m.onnx"), "m", 16000, 0.1, DIM, threads=1)
    audio = np.random.default_rng(0).normal(size=4800).astype(np.float32)
    assert embedder.input_samples is None
    np.testing.assert_allclose(embedder.embed(audio), _reference(audio), atol=1e-5)
    assert embedder.embed(audio).dtype == np.float32


def test_static_model_averages_windows_over_a_long_clip(tmp_path: Path) -> None:
    embedder = OnnxEmbedder(_model(tmp_path / "m.onnx", samples=1600), "m", 16000, 0.1, DIM)
    audio = np.random.default_rng(0).normal(size=4000).astype(np.float32)
    windows = fixed_length_windows(audio, 1600)
    assert windows.shape == (3, 1600) and windows[-1][-1] == audio[-1]
    mean = np.mean([_reference(w) * np.linalg.norm(_unnormalised(w)) for w in windows], axis=0)
    np.testing.assert_allclose(embedder.embed(audio), mean / np.linalg.norm(mean), atol=1e-5)
    short = audio[:1000]
    np.testing.assert_allclose(
        embedder.embed(short), _reference(np.pad(short, (0, 600), mode="wrap")), atol=1e-5
    )


def _unnormalised(audio: np.ndarray) -> np.ndarray:
    kernel = np.random.default_rng(1).normal(size=(DIM, 1, FRAME)).astype(np.float32)
    return np.abs(audio.reshape(-1, FRAME) @ kernel[:, 0, :].T).mean(axis=0)


def test_missing_providers_fall_back_to_cpu_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        chosen = resolve_providers(["tensorrt", "cuda"], ["CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert "tensorrt" in caplog.text and "cuda" in caplog.text
    with pytest.raises(ConfigError, match="openvino"):
        resolve_providers(["openvino"], ["CPUExecutionProvider"])


def test_bad_files_and_dimensions_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BundleError, match=r"broken\.onnx"):
        OnnxEmbedder(broken, "m", 16000, 0.1, DIM)
    with pytest.raises(BundleError, match="outputs 6-dimensional"):
        OnnxEmbedder(_model(tmp_path / "m.onnx"), "m", 16000, 0.1, DIM + 1)
    with pytest.raises(ConfigError, match="threads"):
        OnnxEmbedder(_model(tmp_path / "m.onnx"), "m", 16000, 0.1, DIM, threads=0)
