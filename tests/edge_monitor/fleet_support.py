"""Helpers for the fleet tests: small real ONNX bundles, signed or not, and one that breaks.

`make_model(seed)` is a real waveform-in ONNX graph (framed projection, magnitude, mean);
`nan_above` multiplies it by sqrt(nan_above - mean(x^2)), so the model is fine on the quiet
training clips and gives NaN on louder audio: a model that passed every check on the
workstation and faults on the box's first windows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper
from test_bundle import RATE_HZ, make_tree

from edge_monitor.core.preprocess import PreprocessConfig
from edge_monitor.core.scoring_config import ScoringConfig
from trainer.bundle_builder import ModelEntry, build_bundle, write_tar
from trainer.dcase_data import read_dataset

FRAME = 256
DIM = 12
LOUD_GAIN = 3.0  # live audio of the fleet tests: the training hum, this much louder


def make_model(path: Path, seed: int = 0, nan_above: float | None = None) -> Path:
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(DIM, 1, FRAME)).astype(np.float32)
    nodes = [
        helper.make_node("Unsqueeze", ["wave", "axis"], ["x"]),
        helper.make_node("Conv", ["x", "kernel"], ["frames"], strides=[FRAME]),
        helper.make_node("Abs", ["frames"], ["mag"]),
        helper.make_node("ReduceMean", ["mag", "time"], ["features"], keepdims=0),
    ]
    inits = [numpy_helper.from_array(kernel, "kernel"),
             numpy_helper.from_array(np.array([1], np.int64), "axis"),
             numpy_helper.from_array(np.array([2], np.int64), "time")]
    if nan_above is None:
        nodes.append(helper.make_node("Identity", ["features"], ["embedding"]))
    else:
        nodes += [
            helper.make_node("Mul", ["wave", "wave"], ["square"]),
            helper.make_node("ReduceMean", ["square", "axis"], ["power"], keepdims=1),
            helper.make_node("Sub", ["limit", "power"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["gain"]),
            helper.make_node("Mul", ["features", "gain"], ["embedding"]),
        ]
        inits.append(numpy_helper.from_array(np.array([[nan_above]], np.float32), "limit"))
    graph = helper.make_graph(
        nodes, "fleet-tiny",
        [helper.make_tensor_value_info("wave", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, DIM])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def data_tree(root: Path) -> Path:
    return make_tree(root) if not root.exists() else root


def make_bundle(
    work: Path, name: str, seed: int, sign_key=None, nan_above: float | None = None
) -> tuple[Path, Path]:
    """(bundle dir, .tar) of one tiny ONNX model over the fan tree in `work/data`."""
    data = data_tree(work / "data")
    model = make_model(work / f"{name}.onnx", seed, nan_above)
    entry = ModelEntry("tiny", "onnx", RATE_HZ, 1.0, DIM, file=model)
    # The breaking model sees raw levels (no loudness normalisation), as it would if the
    # workstation had exported it with a different front end than the box's audio needs.
    preprocess = PreprocessConfig(normalise_loudness=nan_above is None)
    bundle = build_bundle(work / name, [entry], read_dataset(data), ScoringConfig(k=2), 0.1,
                          preprocess=preprocess, sign_key=sign_key)
    return bundle, write_tar(bundle, work / f"{name}.tar")


def loud_audio(work: Path) -> Path:
    """The fan's normal test clips back to back, LOUD_GAIN times louder, as one file."""
    data = data_tree(work / "data")
    clips = sorted((data / "fan" / "test").glob("*_normal_*"))
    audio = np.concatenate([sf.read(p, dtype="float32")[0] for p in clips]) * LOUD_GAIN
    path = work / "live.wav"
    sf.write(path, audio, RATE_HZ)
    return path


def install_args(tar: Path) -> dict[str, object]:
    """The fields of a bundle/install command for a local .tar."""
    data = tar.read_bytes()
    return {"url": tar.resolve().as_uri(), "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data)}
