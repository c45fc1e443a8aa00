"""What ``sparc inspect`` shows: op histogram, size, MACs, per-layer density and pattern.

A layer carrying a ``sparc.algorithms.sparsity`` annotation (or an ``ai.sparc::SparseLinear`` node,
whose weight is decompressed) shows its claimed pattern and whether the weight satisfies it.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnx_ir as ir

from sparc.algorithms.sparsity import annotation, verify
from sparc.analysis.linear import NAME_SCOPES_KEY, layer_name
from sparc.data import synthetic_feeds
from sparc.measure.cost import ModelStats, model_stats
from sparc.ops import sparse_linear


@dataclasses.dataclass
class LayerWeights:
    """One weighted layer (MatMul/Gemm/Conv/ConvTranspose with a constant weight)."""

    name: str
    op: str
    shape: list[int]
    density: float
    pattern: str | None = None
    verified: bool | None = None


@dataclasses.dataclass
class Summary:
    ops: dict[str, int]
    stats: ModelStats
    input_shapes: dict[str, list[int]]
    layers: list[LayerWeights]


WEIGHTED_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}


def weighted_layers(graph: ir.Graph) -> list[LayerWeights]:
    """Every node of a weighted op whose weight is a constant, with density and pattern."""
    layers = []
    for node in graph:
        found = _weight_of(node)
        if found is None:
            continue
        name, weight_oi = found
        density = float(np.count_nonzero(weight_oi)) / max(weight_oi.size, 1)
        layer = LayerWeights(name, node.op_type, list(weight_oi.shape), density)
        pattern = annotation(node)
        if pattern is not None:
            layer.pattern = pattern.describe() + (f" ({pattern.method})" if pattern.method else "")
            layer.verified = verify(_as_matrix(node, weight_oi), pattern)[0]
        layers.append(layer)
    return layers


def _weight_of(node: ir.Node) -> tuple[str, np.ndarray] | None:
    """(layer name, weight array) of a weighted node, else None."""
    if sparse_linear.is_sparse_linear(node):
        values = node.inputs[1]  # named "<layer>.values" by FuseSparseOps
        name = layer_name(node) if NAME_SCOPES_KEY in node.metadata_props else values.name.removesuffix(".values")
        return name, sparse_linear.node_weight(node)
    index = WEIGHTED_OPS.get(node.op_type)
    if node.domain != "" or index is None or len(node.inputs) <= index:
        return None
    weight = node.inputs[index]
    if weight is None or weight.const_value is None:
        return None
    return layer_name(node, weight), weight.const_value.numpy()


def _as_matrix(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    """The weight as W[out, in], the orientation patterns are defined in."""
    if node.op_type == "MatMul" or (node.op_type == "Gemm" and not node.attributes.get_int("transB", 0)):
        return weight.T
    if node.op_type in ("Conv", "ConvTranspose"):
        return weight.reshape(weight.shape[0], -1)
    return weight  # SparseLinear and Gemm with transB hold W[out, in]


def summarize(model: ir.Model, dims: dict[str, int] | None = None) -> Summary:
    """Op histogram, statistics (MACs at the given symbolic dims, default 1) and layer density."""
    feeds = synthetic_feeds(model, dims)
    ops = collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph
    )
    return Summary(
        ops=dict(ops.most_common()),
        stats=model_stats(model, feeds),
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        layers=weighted_layers(model.graph),
    )
