"""Linear layers of a graph: MatMul or Gemm nodes multiplying activations by a constant weight.

Cases recognised (x is the activation, W a constant):
1. ``MatMul(x, W)`` with W of shape [K, N] (the torch exporter's pre-transposed form).
2. ``Gemm(x, W, b)`` with ``transB`` = 0 (W is [K, N]) or 1 (W is [N, K]); ``transA`` = 0,
   ``alpha`` = ``beta`` = 1.
3. ``MatMul(x, Transpose(W))`` with W an initializer of shape [N, K] (a tied head reading the
   embedding table), recorded with ``transpose_node``.
4. A following ``Add(y, b)`` with a constant 1-D bias of length N (MatMul form).
Every layer is described in "math" orientation: ``weight_kn()`` is always [K, N], so
y = x · W + b.
"""

from __future__ import annotations

import ast
import dataclasses

import numpy as np
import onnx_ir as ir

from sparc.ir_utils import constant_array

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
FOLDED_FROM_KEY = "pkg.onnxscript.optimizer.folded_from"


@dataclasses.dataclass
class LinearLayer:
    """One linear layer: ``node`` computes x·W (+ b via ``bias_node`` or Gemm's C)."""

    name: str
    node: ir.Node
    weight: ir.Value
    transposed: bool
    bias: ir.Value | None = None
    bias_node: ir.Node | None = None
    transpose_node: ir.Node | None = None

    @property
    def output(self) -> ir.Value:
        """The value holding x·W + b."""
        return (self.bias_node or self.node).outputs[0]

    @property
    def input(self) -> ir.Value:
        return self.node.inputs[0]

    def weight_kn(self) -> np.ndarray:
        """The weight as a [K, N] array (input features by output features)."""
        array = self.weight.const_value.numpy()
        return array.T if self.transposed else array

    @property
    def in_features(self) -> int:
        return self.weight.shape[1 if self.transposed else 0]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0 if self.transposed else 1]


def find_linear_layers(graph: ir.Graph) -> list[LinearLayer]:
    """Every linear layer of ``graph`` in topological order (cases 1-4 of the module doc)."""
    layers = []
    for node in graph:
        layer = _as_linear(node)
        if layer is not None:
            layers.append(layer)
    return layers


_WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
_DEQUANTIZING_OPS = {"Cast", "Mul", "Sub", "DequantizeLinear", "Transpose", "Reshape", "Identity"}


def computed_weights(graph: ir.Graph) -> list[str]:
    """MatMul/Gemm/Conv nodes whose weight is computed in the graph from initializers (int8
    weights dequantized by Cast × scale or DequantizeLinear): ``'node' (weight from Op)``.
    sparc's passes edit initializer weights, so these layers are left alone; passes say so."""
    found = []
    for node in graph:
        if node.domain != "" or node.op_type not in _WEIGHT_OPS or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        producer = weight.producer() if weight is not None else None
        if producer is not None and _constant_derived(weight, depth=6):
            found.append(f"{node.name or node.outputs[0].name!r} (weight from {producer.op_type})")
    return found


def subgraph_layers(graph: ir.Graph) -> list[str]:
    """Linear layers inside the If/Loop/Scan bodies of ``graph`` (at any depth), by name."""
    found = []
    for node in graph:
        for attribute in node.attributes.values():
            bodies = [attribute.value] if attribute.type == ir.AttributeType.GRAPH else (
                list(attribute.value) if attribute.type == ir.AttributeType.GRAPHS else [])
            for body in bodies:
                found += [layer.name for layer in find_linear_layers(body)] + subgraph_layers(body)
    return found


def skipped_layers_note(graph: ir.Graph) -> str | None:
    """What a pass says of the layers it cannot edit: weights computed in the graph
    (:func:`computed_weights`) and layers inside subgraphs (None: there are none)."""
    notes = []
    for found, why in ((computed_weights(graph), "take weights computed in the graph"),
                       (subgraph_layers(graph), "sit inside If/Loop/Scan subgraphs")):
        if found:
            more = " ..." if len(found) > 4 else ""
            notes.append(f"{len(found)} layers {why}, which passes do not edit: {', '.join(found[:4])}{more}")
    return "; ".join(notes) or None


def _constant_derived(value: ir.Value | None, depth: int) -> bool:
    """Whether ``value`` is computed only from initializers and constants by dequantizing ops."""
    if value is None or value.const_value is not None:
        return value is not None
    producer = value.producer()
    if producer is None or depth == 0:
        return False
    if producer.op_type == "Constant":
        return True
    return producer.op_type in _DEQUANTIZING_OPS and all(_constant_derived(v, depth - 1) for v in producer.inputs)


def _as_linear(node: ir.Node) -> LinearLayer | None:
    if node.domain != "" or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    transpose = _constant_transpose(weight) if node.op_type == "MatMul" else None
    if transpose is not None:
        weight = transpose.inputs[0]
    if weight is None or not weight.is_initializer() or weight.const_value is None:
        return None
    if len(weight.shape) != 2:
        return None
    if node.op_type == "MatMul":
        transposed = transpose is not None
        bias, bias_node = _following_bias(node, weight.shape[0 if transposed else 1])
        name = layer_name(node, weight)
        return LinearLayer(name, node, weight, transposed, bias, bias_node, transpose)
    if node.op_type == "Gemm" and _plain_gemm(node):
        transposed = node.attributes.get_int("transB", 0) == 1
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return LinearLayer(layer_name(node, weight), node, weight, transposed, bias)
    return None


def _constant_transpose(value: ir.Value | None) -> ir.Node | None:
    """The ``Transpose(W, perm=[1, 0])`` producing ``value`` from an initializer, if so."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Transpose" or producer.domain != "":
        return None
    source = producer.inputs[0]
    if source is None or not source.is_initializer() or source.shape is None or len(source.shape) != 2:
        return None
    if tuple(producer.attributes.get_ints("perm", (1, 0))) != (1, 0):
        return None
    return producer


def _plain_gemm(node: ir.Node) -> bool:
    attrs = node.attributes
    return (
        attrs.get_int("transA", 0) == 0
        and attrs.get_float("alpha", 1.0) == 1.0
        and attrs.get_float("beta", 1.0) == 1.0
    )


def _following_bias(node: ir.Node, out_features: int) -> tuple[ir.Value | None, ir.Node | None]:
    """The Add that adds a constant vector of length N to the MatMul's only use, if any."""
    uses = node.outputs[0].uses()
    if len(uses) != 1 or node.outputs[0].is_graph_output():
        return None, None
    add = uses[0].node
    if add.op_type != "Add" or add.domain != "":
        return None, None
    other = add.inputs[1 - uses[0].idx]
    array = constant_array(other)
    if array is None or array.shape != (out_features,):
        return None, None
    return other, add


def layer_name(node: ir.Node, weight: ir.Value | None = None) -> str:
    """A readable name for the layer ``node`` belongs to.

    The torch exporter's innermost module scope (``encoder.layer.0.attention.self.query``)
    when present, then the weight's original name (without ``.weight``; ``W@node`` when several
    MatMul/Gemm nodes read W, e.g. an unrolled RNN's steps), then the node name.
    """
    scopes = node.metadata_props.get(NAME_SCOPES_KEY)
    if scopes:
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            names = []
        if len(names) >= 2 and names[-2]:
            return names[-2]
    if weight is not None:
        original = weight.metadata_props.get(FOLDED_FROM_KEY)
        if original:
            try:
                names = ast.literal_eval(original)
            except (ValueError, SyntaxError):
                names = [original]
            if names:
                return _qualified(str(names[0]).removesuffix(".weight"), node, weight)
        if weight.name:
            return _qualified(weight.name.removesuffix(".weight"), node, weight)
    return node.name or node.op_type


def _qualified(name: str, node: ir.Node, weight: ir.Value) -> str:
    readers = sum(use.node.op_type in _WEIGHT_OPS for use in weight.uses())
    return f"{name}@{node.name}" if readers > 1 and node.name else name
