"""FuseSparseOps: an annotated linear layer and its epilogue become one ``ai.sparc::SparseLinear``.

Cases:
1. A MatMul or Gemm (plain or transposed weight) carrying a ``sparc.algorithms.sparsity`` annotation whose
   pattern its weight really satisfies (layers where it does not are reported, not fused).
2. Its bias: Gemm's C, or the following ``Add`` of a constant vector (``sparc.analysis.linear``).
3. An activation reading the (biased) output when it is that value's only reader: Relu,
   Sigmoid, Tanh, Gelu (exact or tanh), or SiLU written as ``Mul(y, Sigmoid(y))`` where the
   Sigmoid and the Mul are y's only readers. An output read by anything else stops the fusion
   before it (the epilogue is not fused).
The weight is stored compressed in the format the pattern calls for: N:M → ``nm``
(values + positions), blocks → ``bsr``, unstructured → ``csr``; layers that read one weight
(an unrolled RNN's steps) share one compressed copy. A layer whose compressed
weight would not be smaller than its dense weight (CSR above about 2/3 density) is reported
and left unfused: fusing it would make the model bigger, not smaller.
"""

from __future__ import annotations

import collections

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparc.algorithms.sparsity import annotation, verify
from sparc.analysis.linear import LinearLayer, find_linear_layers
from sparc.ir_utils import add_initializer
from sparc.ops import DOMAIN, DOMAIN_VERSION, formats
from sparc.ops import sparse_linear as op
from sparc.passes.base import SparcPass, register

SIMPLE_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}


@register
class FuseSparseOps(SparcPass):
    """Fuse annotated sparse linear layers with bias and activation into SparseLinear ops."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        fused, refused = collections.Counter(), []
        stored: dict[tuple, tuple[str, list] | str] = {}  # per weight: (format, compressed inputs) or why not
        for layer in find_linear_layers(model.graph):
            pattern = annotation(layer.node)
            if pattern is None:
                continue
            key = (id(layer.weight), layer.transposed, pattern)  # layers sharing a weight share its copy
            if key not in stored:
                stored[key] = _stored_weight(model.graph, layer, pattern)
            if isinstance(stored[key], str):
                refused.append(f"{layer.name}: {stored[key]}")
                continue
            fmt, weight = stored[key]
            epilogue, activation = _epilogue(layer)
            _fuse(model.graph, layer, (layer.out_features, layer.in_features), pattern, fmt, weight, epilogue,
                  activation)
            fused[f"{pattern.describe()} + {activation}"] += 1
        if fused:
            model.opset_imports[DOMAIN] = DOMAIN_VERSION
            RemoveUnusedNodesPass()(model)
        self.details.update({"fused": sum(fused.values()), "kinds": dict(fused), "refused": refused or "none"})
        return ir.passes.PassResult(model, modified=bool(fused))


def _epilogue(layer: LinearLayer) -> tuple[list[ir.Node], str]:
    """The activation nodes to absorb after the layer's (biased) output, and its name."""
    out = layer.output
    if out.is_graph_output():
        return [], "none"
    uses = [u.node for u in out.uses()]
    if len(uses) == 1 and uses[0].domain == "":
        node = uses[0]
        if node.op_type in SIMPLE_ACTIVATIONS:
            return [node], SIMPLE_ACTIVATIONS[node.op_type]
        if node.op_type == "Gelu":
            approximate = node.attributes.get_string("approximate", "none")
            return [node], "gelu_tanh" if approximate == "tanh" else "gelu"
    if len(uses) == 2:
        sigmoid = next((n for n in uses if n.op_type == "Sigmoid" and n.domain == ""), None)
        mul = next((n for n in uses if n.op_type == "Mul" and n.domain == ""), None)
        if (
            sigmoid is not None
            and mul is not None
            and set(mul.inputs) == {out, sigmoid.outputs[0]}
            and [u.node for u in sigmoid.outputs[0].uses()] == [mul]
            and not sigmoid.outputs[0].is_graph_output()
        ):
            return [sigmoid, mul], "silu"
    return [], "none"


def _stored_weight(graph, layer: LinearLayer, pattern) -> tuple[str, list[ir.Value | None]] | str:
    """The layer's weight compressed into new initializers (format, [values, indices, indptr]),
    or why it is not fused (the pattern does not hold, or the format would not be smaller)."""
    weight = layer.weight_kn().T
    holds, _, reason = verify(weight, pattern)
    if not holds:
        return reason
    fmt, tensors = _compressed(weight, pattern)
    if formats.nbytes(tensors) >= weight.nbytes:
        return f"{fmt} weight ({formats.nbytes(tensors):,} B) is not smaller than dense ({weight.nbytes:,} B)"
    return fmt, [add_initializer(graph, f"{layer.name}.{k}", tensors[k]) if k in tensors else None
                 for k in ("values", "indices", "indptr")]


def _compressed(weight, pattern) -> tuple[str, dict]:
    """The format the pattern calls for and W[out, in] compressed in it."""
    fmt = {"nm": "nm", "block": "bsr", "unstructured": "csr"}[pattern.kind]
    return fmt, op.compress(weight, fmt, pattern.block or (1, 1), pattern.n or 0, pattern.m or 0)


def _fuse(graph, layer: LinearLayer, shape, pattern, fmt, weight: list[ir.Value | None], epilogue: list[ir.Node],
          activation: str) -> None:
    """Replace the layer and its epilogue by one SparseLinear reading the compressed ``weight``
    (values, indices, indptr)."""
    inputs = [layer.input, *weight, layer.bias]
    attributes = {"format": fmt, "shape": list(shape), "activation": activation}
    if fmt == "bsr":
        attributes["blocksize"] = list(pattern.block)
    if fmt == "nm":
        attributes.update({"n": pattern.n, "m": pattern.m})
    last = epilogue[-1] if epilogue else (layer.bias_node or layer.node)
    fused = ir.node(op.OP, inputs, attributes=attributes, domain=DOMAIN, name=f"{layer.node.name}_sparse")
    fused.metadata_props.update(layer.node.metadata_props)
    graph.insert_before(layer.node, fused)
    result = last.outputs[0]
    fused.outputs[0].shape, fused.outputs[0].type = result.shape, result.type
    name = result.name
    result.replace_all_uses_with(fused.outputs[0], replace_graph_outputs=True)
    result.name = f"{name}_unfused"
    fused.outputs[0].name = name
    graph.remove([layer.node, *([layer.bias_node] if layer.bias_node else []), *epilogue], safe=True)
