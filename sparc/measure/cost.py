"""Model size and compute: parameters, non-zero parameters, bytes and MACs from shapes.

Parameters are the elements of floating-point initializers. MACs (multiply-accumulates)
are counted for the ops that dominate compute, from the shapes their operands take when the
model runs on one batch:
- MatMul  A[..., M, K] · B[..., K, N]: |out| · K
- Gemm    [M, K] · [K, N]: M · N · K
- Conv    W[C_out, C_in/g, k...]: |out| · |W[1:]|
- ConvTranspose W[C_in, C_out/g, k...]: |in| · |W[1:]|
- ops of other domains register a rule in ``MAC_RULES`` (e.g. ``ai.sparc`` sparse ops).
Nodes whose shapes cannot be inferred are listed instead of guessed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from sparc.data import CalibrationData
from sparc.measure.execute import collect

Shapes = Mapping[str, tuple[int, ...]]
Feeds = Mapping[str, np.ndarray]
MacRule = Callable[[ir.Node, Shapes], "int | None"]


@dataclasses.dataclass
class ModelStats:
    """Size and compute of a model at one point of a pipeline."""

    params: int
    nonzero_params: int
    bytes: int
    macs: int | None
    unknown_mac_nodes: list[str] = dataclasses.field(default_factory=list)


_QUANTIZED = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4}
_DEQUANTIZING = {"Cast", "DequantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv",
                 "DynamicQuantizeLSTM", "MatMulNBits", "GatherBlockQuantized"}


def is_parameter(value: ir.Value, tensor: ir.TensorProtocol) -> bool:
    """A floating-point tensor, or an 8/4-bit integer one read by a dequantizing op (a
    quantized weight; not the index arrays of sparc's sparse formats, nor int32/int64 shapes)."""
    if tensor.dtype.is_floating_point():
        return True
    return tensor.dtype in _QUANTIZED and any(use.node.op_type in _DEQUANTIZING for use in value.uses())


def count_params(graph: ir.Graph) -> tuple[int, int]:
    """(parameters, non-zero parameters): the elements of every initializer and ``Constant``
    node tensor (paddle2onnx and others keep weights there) that :func:`is_parameter`."""
    total = nonzero = 0
    for value, tensor in _constant_tensors(graph):
        if is_parameter(value, tensor):
            array = tensor.numpy()
            total += array.size
            nonzero += int(np.count_nonzero(array))
            del array
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()  # a memory-mapped weight leaves memory once counted
    return total, nonzero


def _constant_tensors(graph: ir.Graph):
    """(value, tensor) of every initializer and Constant node with a ``value`` tensor."""
    for value in graph.initializers.values():
        if value.const_value is not None:
            yield value, value.const_value
    for node in graph:
        if node.op_type == "Constant" and node.domain == "" and "value" in node.attributes:
            yield node.outputs[0], node.attributes["value"].as_tensor()


def model_bytes(model: ir.Model) -> int:
    """Size of the serialized model in bytes (graph structure plus tensor data).

    Large tensors are counted by their data size rather than serialized, so this is cheap
    for big models; it matches the file size within protobuf's framing bytes.
    """
    structure = _c_api_utils.call_onnx_api(lambda proto: proto.ByteSize(), model)
    hidden = sum(
        v.const_value.nbytes
        for v in model.graph.initializers.values()
        if v.const_value is not None and v.const_value.nbytes > _c_api_utils._BIG_TENSOR_SIZE_LIMIT
    )
    return structure + hidden


def model_stats(model: ir.Model, feeds: Feeds | None) -> ModelStats:
    """Parameters, bytes and MACs of ``model``; MACs need one batch of ``feeds``."""
    params, nonzero = count_params(model.graph)
    macs, unknown = (None, [])
    if feeds is not None:
        macs, unknown = count_macs(model, feeds)
    return ModelStats(params, nonzero, model_bytes(model), macs, unknown)


def count_macs(model: ir.Model, feeds: Feeds) -> tuple[int, list[str]]:
    """Total MACs of one run on ``feeds``, and the nodes whose MACs are unknown."""
    nodes = [
        node
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if (node.domain, node.op_type) in MAC_RULES
    ]
    shapes = observed_shapes(model, nodes, feeds)
    total = 0
    unknown = []
    for node in nodes:
        macs = MAC_RULES[(node.domain, node.op_type)](node, shapes)
        if macs is None:
            unknown.append(node.name or node.op_type)
        else:
            total += macs
    return total, unknown


def observed_shapes(model: ir.Model, nodes, feeds: Feeds) -> dict[str, tuple[int, ...]]:
    """Shapes of the inputs and outputs of ``nodes`` when the model runs on ``feeds``.

    A value's IR shape is used when every dim is a number or a symbol that the graph inputs
    bind (``batch``, ``seq``); the others are exposed as outputs of one ONNX Runtime run
    (ONNX shape inference loses dynamic dims through the Expand/Reshape chains exporters
    emit, so it is not relied on).
    """
    bindings = _symbol_bindings(model, feeds)
    shapes: dict[str, tuple[int, ...]] = {}
    wanted: list[str] = []
    for node in nodes:
        for value in (*node.inputs, *node.outputs):
            if value is None or not value.name or value.name in shapes or value.name in wanted:
                continue  # (an omitted optional output has no name)
            if value.is_graph_input() and value.name in feeds:
                shapes[value.name] = tuple(np.shape(feeds[value.name]))
                continue
            resolved = _resolve(value.shape, bindings)
            if resolved is not None:
                shapes[value.name] = resolved
            elif node.graph is model.graph:
                wanted.append(value.name)
    if wanted:
        recorders = {name: _ShapeRecorder() for name in wanted}
        collect(model, recorders, CalibrationData([dict(feeds)]), description="measuring shapes")
        shapes.update({name: r.shape for name, r in recorders.items()})
    return shapes


def _symbol_bindings(model: ir.Model, feeds: Feeds) -> dict[str, int]:
    """Sizes of the symbolic dims of the graph inputs, read off ``feeds``."""
    bindings: dict[str, int] = {}
    for value in model.graph.inputs:
        if value.shape is None or value.name not in feeds:
            continue
        for dim, size in zip(value.shape, np.shape(feeds[value.name])):
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                bindings[str(dim.value)] = int(size)
    return bindings


def _resolve(shape: ir.Shape | None, bindings: dict[str, int]) -> tuple[int, ...] | None:
    if shape is None:
        return None
    dims = []
    for dim in shape:
        if isinstance(dim, int):
            dims.append(dim)
        elif dim.value is not None and str(dim.value) in bindings:
            dims.append(bindings[str(dim.value)])
        else:
            return None
    return tuple(dims)


class _ShapeRecorder:
    shape: tuple[int, ...] = ()

    def update(self, array: np.ndarray, feeds) -> None:
        self.shape = tuple(array.shape)


def _shape(value: ir.Value | None, shapes: Shapes) -> tuple[int, ...] | None:
    return None if value is None else shapes.get(value.name)


def _matmul_macs(node: ir.Node, shapes: Shapes) -> int | None:
    a, out = _shape(node.inputs[0], shapes), _shape(node.outputs[0], shapes)
    if a is None or out is None or not a:
        return None
    return math.prod(out) * a[-1]


def _gemm_macs(node: ir.Node, shapes: Shapes) -> int | None:
    a, out = _shape(node.inputs[0], shapes), _shape(node.outputs[0], shapes)
    if a is None or out is None:
        return None
    k = a[0] if node.attributes.get_int("transA", 0) else a[1]
    return math.prod(out) * k


def _conv_macs(node: ir.Node, shapes: Shapes) -> int | None:
    w, out = _shape(node.inputs[1], shapes), _shape(node.outputs[0], shapes)
    if w is None or out is None:
        return None
    return math.prod(out) * math.prod(w[1:])


def _conv_transpose_macs(node: ir.Node, shapes: Shapes) -> int | None:
    x, w = _shape(node.inputs[0], shapes), _shape(node.inputs[1], shapes)
    if x is None or w is None:
        return None
    return math.prod(x) * math.prod(w[1:])


MAC_RULES: dict[tuple[str, str], MacRule] = {
    ("", "MatMul"): _matmul_macs,
    ("", "Gemm"): _gemm_macs,
    ("", "Conv"): _conv_macs,
    ("", "ConvTranspose"): _conv_transpose_macs,
}
