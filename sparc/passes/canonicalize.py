"""Canonicalize: one form for what exporters write differently, before any analysis runs.

Cases (each counted in the report's details):
1. No-ops removed: Identity, inference-time Dropout, Cast to the same type, Expand and
   Transpose that change nothing, Add 0, Sub 0, Mul 1, Div 1; chains of Transpose, Reshape,
   Unsqueeze and Cast collapse (onnxscript's rewrite rules).
2. Constants fold (onnxscript's folder): Shape/Gather/Concat/Unsqueeze arithmetic over sizes
   known statically, on tensors of at most ``SHAPE_LIMIT`` elements (so weights computed in
   the graph, e.g. int8 × scale, stay as stored; the folder may also take the branch of an
   ``If`` whose condition it decides); where a dynamic size stops it, ``Gather(Shape(x), k)``
   of a static size of x becomes that constant.
3. ``MatMul(x, Transpose(W))`` with W a constant read by nothing else: the folder stores W
   transposed, any size, so the MatMul reads [K, N] directly, the form the dynamo exporter
   writes (the analyses treat that and Gemm with ``transB`` alike, ``sparc.analysis.linear``).
   A W also read elsewhere, e.g. a tied embedding table, keeps its Transpose: a copy would
   grow the model.
4. Decomposed LayerNorm (ReduceMean, Sub, Pow, ReduceMean, Add ε, Sqrt, Div, Mul γ, Add β;
   ``sparc.analysis.norms.LastAxisLayerNorm``) becomes ``LayerNormalization`` when the model's
   opset has it (17+); below that the analyses match the decomposed form.
GELU and attention keep the exporter's form: the analyses recognise them as written (attention
by its Softmax reaching a MatMul, ``sparc.analysis.transformer``). The pass is lossless.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer as optimizer
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript import rewriter
from onnxscript.rewriter.rules import common as rules
from onnxscript.rewriter.rules.fusion import _layer_norm

from sparc.analysis.norms import LAYER_NORM_RULES
from sparc.capture.onnx import default_opset
from sparc.ir_utils import add_initializer
from sparc.passes.base import SparcPass, register

SHAPE_LIMIT = 64  # shape arithmetic is rank-sized; weights are larger and stay as stored
LAYER_NORM_OPSET = 17
NO_OP_RULES = [
    rules.dropout_inference_rule, rules.dropout_zero_rule, rules.no_op_cast_rule, rules.no_op_expand_rule,
    rules.no_op_transpose_rule, rules.add_0_rule, rules.sub_0_rule, rules.mul_by_1_rule, rules.div_by_1_rule,
    rules.transpose_transpose_rule, rules.reshape_reshape_rule, rules.unsqueeze_unsqueeze_rule, rules.cast_cast_rule,
]


@register
class Canonicalize(SparcPass):
    """Rewrite exporter-specific forms into the one form the analyses expect."""

    lossless = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes_before = sum(1 for _ in model.graph)
        counts = {
            "identities removed": _remove_identities(model),
            "no-ops": rewriter.RewriteRuleSet(NO_OP_RULES).apply_to_model(model),
            "constants folded": _fold_shapes(model),
            "static sizes read as constants": _fold_static_sizes(model),
            "layer norms fused": _fuse_layer_norms(model),
        }
        RemoveUnusedNodesPass()(model)
        self.details.update({k: v for k, v in counts.items() if v})
        self.details["nodes"] = {"before": nodes_before, "after": sum(1 for _ in model.graph)}
        return ir.passes.PassResult(model, modified=any(counts.values()))


def _remove_identities(model: ir.Model) -> int:
    """Case 1's Identity nodes of the main graph, except those writing a graph output (onnx-ir's
    IdentityEliminationPass raises on a value that is also an output of an ``If`` body)."""
    removed = 0
    for node in list(model.graph):
        if node.op_type != "Identity" or node.domain != "" or node.outputs[0].is_graph_output():
            continue
        node.outputs[0].replace_all_uses_with(node.inputs[0])
        model.graph.remove(node, safe=True)
        removed += 1
    return removed


def _fold_shapes(model: ir.Model) -> str:
    """Case 2: 'N → M nodes' (M may be larger where the folder inlined an ``If`` branch), or ''."""
    before = sum(1 for _ in model.graph)
    modified = optimizer.fold_constants_ir(model, input_size_limit=SHAPE_LIMIT, output_size_limit=SHAPE_LIMIT).modified
    RemoveUnusedNodesPass()(model)
    return f"{before} → {sum(1 for _ in model.graph)} nodes" if modified else ""


def _fold_static_sizes(model: ir.Model) -> int:
    """Case 2 where the folder stops at a dynamic dimension: ``Gather(Shape(x), k)`` with
    x's size at axis k known becomes that constant."""
    folded = 0
    for node in list(model.graph):
        if node.op_type != "Gather" or node.domain != "" or node.attributes.get_int("axis", 0) != 0:
            continue
        sizes, index = _shape_of(node.inputs[0]), node.inputs[1].const_value if node.inputs[1] else None
        if sizes is None or index is None:
            continue
        picked = [sizes[int(i)] for i in np.asarray(index.numpy()).reshape(-1)]
        if not all(isinstance(size, int) for size in picked):
            continue
        value = add_initializer(model.graph, f"{node.outputs[0].name}_static",
                                np.asarray(picked, np.int64).reshape(index.shape.numpy()))
        node.outputs[0].replace_all_uses_with(value, replace_graph_outputs=False)
        folded += 1
    return folded


def _shape_of(value: ir.Value | None) -> list | None:
    """The sizes (int or symbolic) of the input of a plain ``Shape`` producing ``value``."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Shape" or producer.domain != "" or producer.attributes:
        return None
    shape = producer.inputs[0].shape
    return None if shape is None else [d if isinstance(d, int) else None for d in shape]


def _fuse_layer_norms(model: ir.Model) -> int:
    """Case 4, where the opset has LayerNormalization."""
    if default_opset(model) < LAYER_NORM_OPSET:
        return 0
    fused = rewriter.RewriteRuleSet(LAYER_NORM_RULES).apply_to_model(model)
    if fused:  # then absorb the Add of β
        rewriter.RewriteRuleSet([_layer_norm._layer_norm_with_bias_rule]).apply_to_model(model)
    return fused
