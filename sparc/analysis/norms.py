"""Normalization layers over the last axis, fused or decomposed.

Cases recognised (x is the normalized value, γ the scale, β the shift, all constants):
1. ``LayerNormalization(x, γ[, β])`` with axis -1.
2. ``RMSNormalization(x, γ)`` (opset 23) with axis -1.
3. Decomposed RMSNorm as Hugging Face Llama-style models export it:
   γ · (x · 1/√(mean(x²) + ε)) (onnxscript's RMSNorm fusion pattern, used to match only).
4. Decomposed LayerNorm: γ · (x − mean x) / √(var + ε) (``LastAxisLayerNorm``: ReduceMean's
   axes as an input, opset 18+, or as an attribute, older opsets; Div or Mul by Reciprocal;
   γ on either side), optionally followed by ``Add(·, β)``.
The analysis never rewrites: it reports which nodes form each norm (``Canonicalize`` uses
``LastAxisLayerNorm`` to fuse them).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.fusion import _rms_normalization

from sparc.ir_utils import constant_array

NormKind = Literal["layer", "rms"]


@dataclasses.dataclass
class Norm:
    """y = normalize(x) · γ (+ β) over the last axis; ``nodes`` compute y from x."""

    kind: NormKind
    input: ir.Value
    output: ir.Value
    scale: np.ndarray | None
    bias: np.ndarray | None
    epsilon: float
    nodes: list[ir.Node]


_RMS_RULES = _rms_normalization.rms_normalization_rules
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)


class LastAxisLayerNorm(pattern.RewriteRuleClassBase):
    """γ · (x − mean x) / √(mean (x − mean x)² + ε), both means over the last axis (case 4);
    rewritten to ``LayerNormalization`` (opset 17+)."""

    def pattern(self, op, x, scale, epsilon):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["mean"])
        deviation = op.Sub(x, mean)
        squared = pattern.OrValue([op.Mul(deviation, deviation), op.Pow(deviation, 2)])
        variance = op.ReduceMean(squared, _allow_other_inputs=True, _allow_other_attributes=True,
                                 _outputs=["variance"])
        std = op.Sqrt(op.Add(variance, epsilon))
        normalized = pattern.OrValue([op.Div(deviation, std), op.Mul(deviation, op.Reciprocal(std))])
        return op.Mul(normalized, scale)

    def check(self, context, x, scale, epsilon, mean, variance, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if (x.dtype or scale.dtype) not in FLOAT_TYPES:  # x's type may be unknown before shape inference
            return result.fail("not a float input", x)
        value = constant_array(epsilon)
        if value is None or value.size != 1:
            return result.fail("epsilon is not a constant scalar", epsilon)
        if not all(_means_last_axis(v.producer(), x) for v in (mean, variance)):
            return result.fail("a mean is not over the last axis (keeping it)", x)
        return result

    def rewrite(self, op, x, scale, epsilon, **_):
        return op.LayerNormalization(x, scale, axis=-1, epsilon=float(constant_array(epsilon).item()),
                                     stash_type=(x.dtype or scale.dtype).value)


def _means_last_axis(node: ir.Node, x: ir.Value) -> bool:
    """ReduceMean over the last axis of x, keeping it (axes as an input or an attribute)."""
    if node.attributes.get_int("keepdims", 1) != 1:
        return False
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = constant_array(node.inputs[1])
        axes = None if axes is None else axes.reshape(-1).tolist()
    else:
        axes = list(node.attributes.get_ints("axes", []))
    rank = x.shape.rank() if x.shape is not None else None
    return axes == [-1] or (rank is not None and axes == [rank - 1])


LAYER_NORM_RULES = LastAxisLayerNorm.rule().commute()


def find_norms(model: ir.Model) -> dict[ir.Value, Norm]:
    """Every normalization of the main graph, keyed by its output value."""
    norms: dict[ir.Value, Norm] = {}
    for node in model.graph:
        norm = _as_norm(model, node)
        if norm is not None:
            norms[norm.output] = norm
    return norms


def _as_norm(model: ir.Model, node: ir.Node) -> Norm | None:
    if node.domain != "":
        return None
    if node.op_type in ("LayerNormalization", "RMSNormalization"):
        return _fused(node)
    if node.op_type == "Mul":
        for rule in _RMS_RULES:
            match = rule.match(model, model.graph, node, check_nodes_are_removable=False)
            if match:
                return _decomposed("rms", match, node)
        for rule in LAYER_NORM_RULES:
            match = rule.match(model, model.graph, node, check_nodes_are_removable=False)
            if match:
                return _with_bias(_decomposed("layer", match, node))
    return None


def _fused(node: ir.Node) -> Norm | None:
    if node.attributes.get_int("axis", -1) != -1:
        return None
    scale = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if scale is None or (len(node.inputs) > 2 and node.inputs[2] is not None and bias is None):
        return None
    kind: NormKind = "layer" if node.op_type == "LayerNormalization" else "rms"
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    if any(out is not None and out.uses() for out in node.outputs[1:]):
        return None  # mean / inverse std deviation outputs are read elsewhere
    return Norm(kind, node.inputs[0], node.outputs[0], scale, bias, epsilon, [node])


def _decomposed(kind: NormKind, match, last: ir.Node) -> Norm | None:
    bindings = match.bindings
    scale = constant_array(bindings.get("scale"))
    epsilon = constant_array(bindings.get("epsilon"))
    if scale is None or epsilon is None or epsilon.size != 1:
        return None
    nodes = list(match.nodes)
    inner = [out for node in nodes for out in node.outputs if out is not last.outputs[0]]
    if any(out.is_graph_output() or any(u.node not in nodes for u in out.uses()) for out in inner):
        return None  # an intermediate of the norm is read elsewhere
    return Norm(kind, bindings["x"], last.outputs[0], scale, None, float(epsilon.item()), nodes)


def _with_bias(norm: Norm | None) -> Norm | None:
    """Absorb an ``Add(y, β)`` with a constant vector following a decomposed LayerNorm."""
    if norm is None:
        return None
    uses = norm.output.uses()
    if len(uses) != 1 or norm.output.is_graph_output():
        return norm
    add = uses[0].node
    if add.op_type != "Add" or add.domain != "":
        return norm
    bias = constant_array(add.inputs[1 - uses[0].idx])
    if bias is None or bias.ndim != 1:
        return norm
    return dataclasses.replace(norm, output=add.outputs[0], bias=bias, nodes=[*norm.nodes, add])
