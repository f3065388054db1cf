"""INT8 quantisation of exported models, keeping the log-mel front end in float.

Quantising the DFT kernels or the mel matrix would spread quantisation noise over every
band before the log amplifies it in quiet bands, so the front end is excluded:

- ONNX (onnxruntime.quantization): the front end is every node the first `Log` depends on
  (framing convolutions, power, mel MatMul, clamp, log); it, the first convolution after it and
  depthwise convolutions stay float (`float_nodes`), and the other Conv/Gemm/MatMul ops are
  quantised dynamically (int8 weights, activations quantised at run time), statically (QDQ,
  activation ranges calibrated on real windows), or for their weights only (`weights`: int8
  per-channel weights that a DequantizeLinear turns back into float; the arithmetic stays
  float, so the file shrinks while the activations keep their full precision).
- TFLite (ai-edge-quantizer): ops whose output tensor is named after a `trainer.frontend`
  module stay float; convolution and fully connected weights elsewhere become int8.
"""

from __future__ import annotations

import importlib
import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from edge_monitor.core.atomic import atomic_path
from edge_monitor.core.errors import ConfigError, RuntimeUnavailableError

log = logging.getLogger(__name__)

OnnxInt8Mode = Literal["dynamic", "static", "weights"]
ONNX_INT8_MODES = ("dynamic", "static", "weights")
TFLITE_FRONTEND_PATTERN = "trainer.frontend."
# ai-edge-quantizer matches this against each op's output tensor name.
TFLITE_QUANTISE_REGEX = rf"^(?!.*{re.escape(TFLITE_FRONTEND_PATTERN)}).*$"


def front_end_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute a `Log` of the graph and everything it depends on: the
    log-mel front end, and a full-spectrum branch's log spectrum where there is one."""
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    keep: dict[str, onnx.NodeProto] = {}
    stack = [n for n in nodes if n.op_type == "Log"]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep[node.name] = node
        stack += [producer[name] for name in node.input if name in producer]
    return list(keep)


QUANTISED_OPS = ["Conv", "Gemm", "MatMul"]
"""Only weight-bearing ops become int8; elementwise ops (activations, squeeze-excitation gates,
pooling, normalisation) stay float: quantising them cost the EfficientAT export most."""


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _first_convs_after_logs(model: onnx.ModelProto, front: set[str]) -> list[str]:
    """For each `Log`, the first convolution (in graph order) that its output reaches."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    order = {n.name: i for i, n in enumerate(nodes)}
    firsts = []
    for log_node in (n for n in nodes if n.op_type == "Log"):
        seen: set[str] = set()
        stack = list(log_node.output)
        reached = []
        while stack:
            for node in consumers.get(stack.pop(), []):
                if node.name in seen:
                    continue
                seen.add(node.name)
                if node.op_type == "Conv" and node.name not in front:
                    reached.append(node)
                else:
                    stack += list(node.output)
        if reached:
            firsts.append(min(reached, key=lambda n: order[n.name]).name)
    return firsts


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes kept in float: the front ends, the first convolution after each (it sees the log
    range, where int8 steps are coarsest) and depthwise convolutions (one filter per channel:
    per-channel int8 weights there cost far more than they save)."""
    front = set(front_end_nodes(model))
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in front]
    keep = {n.name for n in convs if _group(n) > 1}
    keep.update(_first_convs_after_logs(model, front))
    return sorted(front) + sorted(keep)


class _WindowReader:
    """onnxruntime CalibrationDataReader over waveform windows."""

    def __init__(self, input_name: str, windows: list[np.ndarray]) -> None:
        self._windows = windows
        self._input = input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._windows):
            return None
        window = np.asarray(self._windows[self._next], np.float32)[None, :]
        self._next += 1
        return {self._input: window}

    def rewind(self) -> None:
        self._next = 0


def _weight_axis(node: onnx.NodeProto, rank: int) -> int:
    """The output-channel axis of a node's weight (input 1): one scale per output channel."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return rank - 1  # MatMul: B is [..., K, N]


def int8_weights_only(model: onnx.ModelProto, excluded: set[str]) -> onnx.ModelProto:
    """Store the float weights of Conv/Gemm/MatMul nodes outside `excluded` as symmetric
    per-channel int8, each followed by a DequantizeLinear; everything else is left as it is."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    dequantized: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type not in QUANTISED_OPS or node.name in excluded or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = initializers.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or not tensor.dims:
            continue
        if name not in dequantized:
            weight = numpy_helper.to_array(tensor)
            axis = _weight_axis(node, weight.ndim)
            others = tuple(i for i in range(weight.ndim) if i != axis)
            scale = np.abs(weight).max(axis=others) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            shape = [1] * weight.ndim
            shape[axis] = -1
            quantised = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
            graph.initializer.extend([
                numpy_helper.from_array(quantised, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_zero_point"),
            ])
            new_nodes.append(onnx.helper.make_node(
                "DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=axis,
            ))
            dequantized[name] = f"{name}_dequantized"
        node.input[1] = dequantized[name]
    still_used = {i for n in graph.node for i in n.input}
    for name in dequantized:
        if name not in still_used:
            graph.initializer.remove(initializers[name])
    # The new nodes read only initializers, so they can lead the (topologically sorted) graph.
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def quantize_onnx(
    source: Path,
    target: Path,
    mode: OnnxInt8Mode = "dynamic",
    calibration: list[np.ndarray] | None = None,
) -> Path:
    """Write an INT8 copy of a float ONNX model, the front end left in float, atomically."""
    from onnxruntime import quantization as q

    if mode not in ONNX_INT8_MODES:
        raise ConfigError(f"INT8 mode {mode!r} is unknown; use one of {ONNX_INT8_MODES}")
    with tempfile.TemporaryDirectory() as scratch, atomic_path(target) as tmp:
        prepared = Path(scratch) / "prepared.onnx"
        q.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        excluded = float_nodes(model)
        log.info("quantising %s (%s), keeping %d nodes in float", source, mode, len(excluded))
        if mode == "weights":
            onnx.save(int8_weights_only(model, set(excluded)), str(tmp))
        elif mode == "dynamic":
            q.quantize_dynamic(
                str(prepared), str(tmp), weight_type=q.QuantType.QInt8,
                nodes_to_exclude=excluded, per_channel=True, op_types_to_quantize=QUANTISED_OPS,
            )
        else:
            if not calibration:
                raise ConfigError(
                    "static INT8 needs calibration windows; pass --data with training clips"
                )
            input_name = model.graph.input[0].name
            q.quantize_static(
                str(prepared), str(tmp), _WindowReader(input_name, calibration),
                quant_format=q.QuantFormat.QDQ, per_channel=True,
                activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                nodes_to_exclude=excluded, op_types_to_quantize=QUANTISED_OPS,
                calibrate_method=q.CalibrationMethod.MinMax,
            )
    return target


def _quantizer() -> Any:
    try:
        return importlib.import_module("ai_edge_quantizer.quantizer")
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "int8 TFLite weights need ai-edge-quantizer (installed with litert-torch, the "
            "tflite-export extra); install it or export with --no-tflite-int8"
        ) from exc


def quantize_tflite_weights(source: Path, target: Path) -> Path:
    """Int8 weights (channelwise, dynamic range) for every op after the front end."""
    quantizer_module = _quantizer()
    from ai_edge_quantizer import qtyping

    quantizer = quantizer_module.Quantizer(str(source))
    quantizer.add_dynamic_config(
        regex=TFLITE_QUANTISE_REGEX,
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=8,
    )
    result = quantizer.quantize()
    content = result.quantized_model
    if content is None:
        raise RuntimeUnavailableError(f"{source}: ai-edge-quantizer produced no model")
    Path(target).write_bytes(bytes(content))
    return target
