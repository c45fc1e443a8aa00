"""What ``sparc inspect`` shows: op histogram, size, MACs, and per-layer weight density."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnx_ir as ir

from sparc.analysis.cost import ModelStats, model_stats
from sparc.analysis.linear import layer_name
from sparc.calibrate import synthetic_feeds


@dataclasses.dataclass
class LayerWeights:
    """One weighted layer (MatMul/Gemm/Conv/ConvTranspose with a constant weight)."""

    name: str
    op: str
    shape: list[int]
    density: float


@dataclasses.dataclass
class Summary:
    ops: dict[str, int]
    stats: ModelStats
    input_shapes: dict[str, list[int]]
    layers: list[LayerWeights]


WEIGHTED_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}


def weighted_layers(graph: ir.Graph) -> list[LayerWeights]:
    """Every node of a weighted op whose weight input is an initializer, with its density."""
    layers = []
    for node in graph:
        index = WEIGHTED_OPS.get(node.op_type)
        if node.domain != "" or index is None or len(node.inputs) <= index:
            continue
        weight = node.inputs[index]
        if weight is None or weight.const_value is None:
            continue
        array = weight.const_value.numpy()
        density = float(np.count_nonzero(array)) / max(array.size, 1)
        layers.append(LayerWeights(layer_name(node, weight), node.op_type, list(array.shape), density))
    return layers


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
