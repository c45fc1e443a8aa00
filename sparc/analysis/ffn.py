"""MLP (feed-forward) units: the F intermediate channels between up/gate and down projections.

A unit is a linear layer ``down`` whose input h[..., F] is computed from one or more linear
layers with F outputs (up, gate) by channel-wise ops only:
- unary activations in ``ELEMENTWISE``,
- ``Add``/``Sub``/``Mul``/``Div`` whose other operand is another channel-wise branch, a scalar
  constant, or a constant vector of length F (sliced with the channels).
Every intermediate value is read only inside the unit. Deleting channel j then means deleting
output j of every up/gate layer, entry j of every per-channel constant, and input row j of
``down``; nothing else in the graph changes shape.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from sparc.analysis.linear import LinearLayer, find_linear_layers
from sparc.ir_utils import constant_array

ELEMENTWISE = frozenset(
    {
        "Relu", "Gelu", "Sigmoid", "Tanh", "Erf", "Softplus", "Elu", "Selu", "LeakyRelu",
        "HardSigmoid", "HardSwish", "Mish", "Neg", "Identity", "Abs", "Exp", "Sqrt",
    }
)
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})


@dataclasses.dataclass
class FFNUnit:
    """One MLP unit (see the module docstring)."""

    producers: list[LinearLayer]
    down: LinearLayer
    nodes: list[ir.Node]
    channel_constants: list[tuple[ir.Node, int]]
    channels: int

    @property
    def hidden(self) -> ir.Value:
        """h: the input of ``down``, one value per intermediate channel."""
        return self.down.input

    def intermediate_values(self) -> list[ir.Value]:
        """Values whose last axis has the F channels (producer outputs and the chain)."""
        values = [p.output for p in self.producers]
        values += [p.node.outputs[0] for p in self.producers if p.bias_node is not None]
        return values + [n.outputs[0] for n in self.nodes]


def find_ffn_units(graph: ir.Graph) -> list[FFNUnit]:
    """Every MLP unit of ``graph``, in graph order."""
    layers = find_linear_layers(graph)
    by_output = {layer.output: layer for layer in layers}
    units = []
    for down in layers:
        unit = _unit(down, by_output)
        if unit is not None:
            units.append(unit)
    return units


def _unit(down: LinearLayer, by_output) -> FFNUnit | None:
    channels = down.in_features
    producers: list[LinearLayer] = []
    nodes: list[ir.Node] = []
    constants: list[tuple[ir.Node, int]] = []
    members: set[ir.Node] = {down.node}
    stack = [down.input]
    while stack:
        value = stack.pop()
        layer = by_output.get(value)
        if layer is not None:
            if layer.out_features != channels or layer is down:
                return None
            if layer not in producers:
                producers.append(layer)
                members.update(n for n in (layer.node, layer.bias_node) if n is not None)
            continue
        node = value.producer()
        if node is None or node.domain != "" or len(node.outputs) != 1:
            return None
        if node.op_type in ELEMENTWISE:
            operands = [node.inputs[0]]
        elif node.op_type in BINARY:
            operands = []
            for index, operand in enumerate(node.inputs):
                array = constant_array(operand)
                if array is None:
                    operands.append(operand)
                elif array.size == 1:
                    continue
                elif array.shape[-1:] == (channels,) and array.size == channels:
                    constants.append((node, index))
                else:
                    return None
            if not operands:
                return None
        else:
            return None
        if node not in nodes:
            nodes.append(node)
            members.add(node)
        stack.extend(operands)
    if not producers or not _closed(producers, nodes, members):
        return None
    return FFNUnit(producers, down, nodes, constants, channels)


def _closed(producers: list[LinearLayer], nodes: list[ir.Node], members: set[ir.Node]) -> bool:
    """Every value inside the unit is read only by nodes of the unit."""
    values = [p.output for p in producers] + [n.outputs[0] for n in nodes]
    values += [p.node.outputs[0] for p in producers if p.bias_node is not None]
    return all(
        not v.is_graph_output() and all(use.node in members for use in v.uses()) for v in values
    )

