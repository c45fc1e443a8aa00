"""``ai.sparc::SparseLinear``: y = activation(x · Wᵀ + b) with W[out, in] stored compressed.

Inputs (positions fixed; absent optional inputs are empty):
  0 ``X`` [..., in] float; 1 ``values``; 2 ``indices``; 3 ``indptr`` (CSR/BSR only);
  4 ``bias`` [out] (optional).
Attributes:
  ``format`` "csr" | "bsr" | "nm"; ``shape`` [out, in]; ``blocksize`` [br, bc] (bsr);
  ``n``, ``m`` (nm); ``activation`` one of ``ACTIVATIONS``.
Semantics are defined by :func:`reference` (numpy). :func:`lower_to_onnx` replaces the op by
standard ONNX (MatMul with the decompressed W, Add, activation), which stock ONNX Runtime and
onnxruntime-web run.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from sparc.errors import UnsupportedModelError
from sparc.ir_utils import add_initializer, constant_array
from sparc.ops import formats

DOMAIN = "ai.sparc"
OP = "SparseLinear"
FORMATS = ("csr", "bsr", "nm")
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")


def is_sparse_linear(node: ir.Node) -> bool:
    return node.domain == DOMAIN and node.op_type == OP


def attributes(node: ir.Node) -> dict:
    """The op's attributes as plain Python values, checked."""
    attrs = node.attributes
    fmt = attrs.get_string("format", "")
    if fmt not in FORMATS:
        raise UnsupportedModelError(f"{OP} node {node.name!r} has unknown format {fmt!r}")
    activation = attrs.get_string("activation", "none")
    if activation not in ACTIVATIONS:
        raise UnsupportedModelError(f"{OP} node {node.name!r} has unknown activation {activation!r}")
    shape = tuple(attrs.get_ints("shape", ()))
    if len(shape) != 2:
        raise UnsupportedModelError(f"{OP} node {node.name!r} needs shape [out, in]")
    return {
        "format": fmt,
        "shape": shape,
        "blocksize": tuple(attrs.get_ints("blocksize", (1, 1))),
        "n": attrs.get_int("n", 0),
        "m": attrs.get_int("m", 0),
        "activation": activation,
    }


def dense_weight(fmt: str, shape, tensors: dict[str, np.ndarray], blocksize=(1, 1), n=0, m=0) -> np.ndarray:
    """W[out, in] from its compressed tensors."""
    if fmt == "csr":
        return formats.decompress_csr(tensors["values"], tensors["indices"], tensors["indptr"], shape)
    if fmt == "bsr":
        return formats.decompress_bsr(tensors["values"], tensors["indices"], tensors["indptr"], shape, blocksize)
    return formats.decompress_nm(tensors["values"], tensors["indices"], shape, n, m)


def compress(weight_oi: np.ndarray, fmt: str, blocksize=(1, 1), n=0, m=0) -> dict[str, np.ndarray]:
    """The compressed tensors of W[out, in] in ``fmt``."""
    if fmt == "csr":
        return formats.compress_csr(weight_oi)
    if fmt == "bsr":
        return formats.compress_bsr(weight_oi, tuple(blocksize))
    return formats.compress_nm(weight_oi, n, m)


def node_weight(node: ir.Node) -> np.ndarray:
    """The dense W[out, in] a SparseLinear node holds."""
    attrs = attributes(node)
    tensors = {
        name: constant_array(node.inputs[i])
        for i, name in ((1, "values"), (2, "indices"), (3, "indptr"))
        if len(node.inputs) > i and node.inputs[i] is not None
    }
    if any(v is None for v in tensors.values()):
        raise UnsupportedModelError(f"{OP} node {node.name!r}: compressed weights must be constants")
    return dense_weight(attrs["format"], attrs["shape"], tensors, attrs["blocksize"], attrs["n"], attrs["m"])


def activate(y: np.ndarray, activation: str) -> np.ndarray:
    """The epilogue activations, as ONNX defines them."""
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "gelu":
        from scipy.special import erf

        return 0.5 * y * (1 + erf(y / math.sqrt(2)))
    if activation == "gelu_tanh":
        return 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))
    if activation == "silu":
        return y / (1 + np.exp(-y))
    if activation == "sigmoid":
        return 1 / (1 + np.exp(-y))
    if activation == "tanh":
        return np.tanh(y)
    return y


def reference(x: np.ndarray, weight_oi: np.ndarray, bias: np.ndarray | None, activation: str) -> np.ndarray:
    """The semantic definition: activation(x · Wᵀ + b), computed in float64."""
    y = x.astype(np.float64) @ weight_oi.astype(np.float64).T
    if bias is not None:
        y = y + bias
    return activate(y, activation).astype(x.dtype)


def macs(node: ir.Node, shapes) -> int | None:
    """Multiply-accumulates actually needed: rows of X times stored non-zeros."""
    x = shapes.get(node.inputs[0].name)
    if x is None:
        return None
    return math.prod(x[:-1]) * int(np.count_nonzero(node_weight(node)))


def lower_to_onnx(graph: ir.Graph, node: ir.Node, opset: int, dense: dict) -> None:
    """Replace ``node`` by MatMul(X, Wᵀ) [+ Add(b)] [+ activation] of standard ONNX.

    ``dense`` maps compressed weights already lowered to their dense initializer, so nodes
    sharing one compressed weight share one dense copy."""
    attrs = attributes(node)
    x, bias = node.inputs[0], node.inputs[4] if len(node.inputs) > 4 else None
    key = tuple(id(v) for v in node.inputs[1:4])
    if key not in dense:
        dense[key] = add_initializer(graph, f"{node.name}.weight", np.ascontiguousarray(node_weight(node).T))
    kn = dense[key]
    matmul = ir.node("MatMul", [x, kn], name=f"{node.name}_matmul")
    matmul.metadata_props.update(node.metadata_props)
    nodes = [matmul]
    out = matmul.outputs[0]
    if bias is not None:
        nodes.append(ir.node("Add", [out, bias], name=f"{node.name}_bias"))
        out = nodes[-1].outputs[0]
    nodes += _activation_nodes(out, attrs["activation"], node.name, opset)
    graph.insert_before(node, nodes)
    final = nodes[-1].outputs[0]
    name = node.outputs[0].name
    node.outputs[0].name = f"{name}_lowered"
    final.name = name
    final.shape, final.type = node.outputs[0].shape, node.outputs[0].type
    node.outputs[0].replace_all_uses_with(final, replace_graph_outputs=True)
    graph.remove(node, safe=True)


def _activation_nodes(value: ir.Value, activation: str, name: str, opset: int) -> list[ir.Node]:
    if activation == "none":
        return []
    if activation in ("relu", "sigmoid", "tanh"):
        return [ir.node(activation.capitalize(), [value], name=f"{name}_{activation}")]
    if activation == "silu":
        sigmoid = ir.node("Sigmoid", [value], name=f"{name}_sigmoid")
        return [sigmoid, ir.node("Mul", [value, sigmoid.outputs[0]], name=f"{name}_silu")]
    approximate = "tanh" if activation == "gelu_tanh" else "none"
    if opset >= 20:
        return [ir.node("Gelu", [value], attributes={"approximate": approximate}, name=f"{name}_gelu")]
    raise UnsupportedModelError(f"lowering {activation} needs opset 20 (Gelu); the model has {opset}")
