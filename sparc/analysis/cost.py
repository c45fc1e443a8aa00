"""Model size and compute: parameters, non-zero parameters, bytes and MACs from shapes.

Parameters are the elements of floating-point initializers. MACs (multiply-accumulates)
are counted for the ops that dominate compute, from shapes that ONNX shape inference derives
for concrete input shapes:
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
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

Shapes = Mapping[str, tuple[int, ...]]
MacRule = Callable[[ir.Node, Shapes], "int | None"]


@dataclasses.dataclass
class ModelStats:
    """Size and compute of a model at one point of a pipeline."""

    params: int
    nonzero_params: int
    bytes: int
    macs: int | None
    unknown_mac_nodes: list[str] = dataclasses.field(default_factory=list)


def is_parameter(value: ir.Value) -> bool:
    """A floating-point initializer with data."""
    return value.const_value is not None and value.const_value.dtype.is_floating_point()


def count_params(graph: ir.Graph) -> tuple[int, int]:
    """(parameters, non-zero parameters) over the floating-point initializers of ``graph``."""
    total = nonzero = 0
    for value in graph.initializers.values():
        if is_parameter(value):
            array = value.const_value.numpy()
            total += array.size
            nonzero += int(np.count_nonzero(array))
    return total, nonzero


def model_bytes(model: ir.Model) -> int:
    """Size of the serialized model in bytes."""
    return ir.serde.serialize_model(model).ByteSize()


def model_stats(model: ir.Model, input_shapes: Shapes | None) -> ModelStats:
    """Parameters, bytes and MACs of ``model``; MACs need concrete ``input_shapes``."""
    params, nonzero = count_params(model.graph)
    macs, unknown = (None, [])
    if input_shapes is not None:
        macs, unknown = count_macs(model, input_shapes)
    return ModelStats(params, nonzero, model_bytes(model), macs, unknown)


def count_macs(model: ir.Model, input_shapes: Shapes) -> tuple[int, list[str]]:
    """Total MACs for inputs of ``input_shapes``, and the nodes whose MACs are unknown."""
    shapes = infer_concrete_shapes(model, input_shapes)
    total = 0
    unknown = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        rule = MAC_RULES.get((node.domain, node.op_type))
        if rule is None:
            continue
        macs = rule(node, shapes)
        if macs is None:
            unknown.append(node.name or node.op_type)
        else:
            total += macs
    return total, unknown


def infer_concrete_shapes(model: ir.Model, input_shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value ONNX shape inference can resolve for these input shapes."""

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        del proto.graph.value_info[:]
        for inp in proto.graph.input:
            if inp.name in input_shapes:
                dims = inp.type.tensor_type.shape.dim
                del dims[:]
                for size in input_shapes[inp.name]:
                    dims.add().dim_value = int(size)
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)

    try:
        inferred = _c_api_utils.call_onnx_api(infer, model)
    except Exception:  # shape inference can fail on exotic graphs: MACs become unknown
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    for value in model.graph.initializers.values():
        if value.shape is not None and value.shape.is_static():
            shapes[value.name] = tuple(value.shape.numpy())
    return shapes


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
