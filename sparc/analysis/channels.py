"""Coupled channels: which channels of which tensors must be removed together.

A *space* is one axis of one value (``value``, ``axis``) whose entries are channels. Every
op touching a space links its entries to entries of other spaces through a rule from the
registry ``RULES`` of :mod:`sparc.analysis.channel_rules` (an explicit list: an op without a rule is never guessed about). Linking
is element-wise, so index mappings come for free:
- identity (element-wise ops, BatchNormalization, pooling, Transpose, Squeeze, residual Adds,
  squeeze-and-excitation Muls: channel i ↔ channel i),
- offsets (Concat/Split/Slice on the channel axis: input k's channel i ↔ output offset_k + i),
- expansion (Flatten/Reshape merging the channel axis with trailing dims: channel c ↔ features
  c·inner … c·inner + inner − 1),
- contraction (Reshape splitting channels into heads: channel c ↔ head c // head_dim), which
  makes whole attention heads the unit through the attention MatMuls.
The connected components of channel entries are the *units* (removable together); the
connected components of spaces are the *groups*. Rules also record *members*: the constant
tensors to slice when units go (weights, biases, BatchNorm statistics, per-channel constants,
shape constants, a depthwise Conv's ``group``). A space reaching a graph input or output, an
op without a rule, or a rule's unsupported case *blocks* its group, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
import scipy.sparse
import scipy.sparse.csgraph

from sparc.analysis.channel_rules import RULES, linear_rule
from sparc.analysis.linear import LinearLayer, find_linear_layers, layer_name

Shapes = Mapping[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Space:
    value: ir.Value
    axis: int


@dataclasses.dataclass(frozen=True)
class Member:
    """A constant to edit when channels of ``space`` go.

    kind: ``"slice"`` (take kept entries of input ``index`` of ``node`` along ``axis``),
    ``"group"`` (a depthwise Conv's group attribute = kept count), ``"shape"`` (entry
    ``axis`` of the shape tensor at input ``index`` = kept count), ``"split"`` (Split sizes),
    ``"slice_bounds"`` (a Slice's starts/ends on the channel axis).
    role: ``"producer"`` (the weight makes these channels), ``"consumer"`` (the weight reads
    them), or ``"other"``.
    """

    space: Space
    node: ir.Node
    index: int
    axis: int
    kind: str = "slice"
    role: str = "other"


class _Builder:
    """Accumulates spaces, element links, members and blockers while propagating."""

    def __init__(self, shapes: Shapes):
        self.shapes = shapes
        self.spaces: dict[Space, int] = {}
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self.total = 0
        self.edges_a: list[np.ndarray] = []
        self.edges_b: list[np.ndarray] = []
        self.members: list[Member] = []
        self.member_set: set[Member] = set()
        self.blockers: dict[Space, str] = {}
        self.queue: list[Space] = []

    def size(self, value: ir.Value, axis: int) -> int | None:
        shape = self.shapes.get(value.name)
        return None if shape is None or axis >= len(shape) else shape[axis]

    def space(self, value: ir.Value, axis: int) -> Space | None:
        """The space (value, axis), created and queued on first use; None if its size is unknown."""
        space = Space(value, axis)
        if space in self.spaces:
            return space
        size = self.size(value, axis)
        if size is None:
            return None
        self.spaces[space] = len(self.sizes)
        self.offsets.append(self.total)
        self.sizes.append(size)
        self.total += size
        self.queue.append(space)
        return space

    def elements(self, space: Space) -> np.ndarray:
        index = self.spaces[space]
        return self.offsets[index] + np.arange(self.sizes[index])

    def link(self, a: Space, b_value: ir.Value, b_axis: int, mapping: np.ndarray | None = None,
             a_index: np.ndarray | None = None) -> Space | None:
        """Link entries of ``a`` to entries of space (b_value, b_axis).

        Entry ``a_index[i]`` of ``a`` (default: all, in order) links to entry ``mapping[i]`` of b
        (default: the same index). Returns b, or None (and blocks ``a``) if b's size is unknown.
        """
        b = self.space(b_value, b_axis)
        if b is None:
            self.block(a, f"the size of axis {b_axis} of {b_value.name!r} is unknown")
            return None
        src = np.arange(self.sizes[self.spaces[a]]) if a_index is None else a_index
        dst = src if mapping is None else mapping
        self.edges_a.append(self.offsets[self.spaces[a]] + src)
        self.edges_b.append(self.offsets[self.spaces[b]] + dst)
        return b

    def member(self, space: Space, node: ir.Node, index: int, axis: int, kind="slice", role="other"):
        member = Member(space, node, index, axis, kind, role)
        if member not in self.member_set:
            self.member_set.add(member)
            self.members.append(member)

    def block(self, space: Space, reason: str) -> None:
        self.blockers.setdefault(space, reason)


@dataclasses.dataclass
class ChannelGroup:
    """Coupled spaces; ``units`` partition their channels into removable sets."""

    index: int
    spaces: list[Space]
    members: list[Member]
    blocked: list[str]
    units: list[dict[Space, np.ndarray]]
    producers: list[str]

    @property
    def prunable(self) -> bool:
        return not self.blocked and len(self.units) > 1

    def size(self, space: Space) -> int:
        """Channels of ``space`` (entries of every unit in it)."""
        return sum(len(unit.get(space, ())) for unit in self.units)

    def kept_indices(self, removed_units: set[int]) -> dict[Space, np.ndarray]:
        """For every space: the channel indices that stay when ``removed_units`` go."""
        kept = {}
        for space in self.spaces:
            gone = [self.units[u][space] for u in removed_units if space in self.units[u]]
            drop = np.concatenate(gone) if gone else np.array([], np.int64)
            kept[space] = np.setdiff1d(np.arange(self.size(space)), drop)
        return kept


def find_channel_groups(model: ir.Model, shapes: Shapes) -> list[ChannelGroup]:
    """Every group reached from the output channels of Conv, ConvTranspose and linear layers.

    ``shapes`` holds concrete shapes of the graph's values (``sparc.measure.cost
    .observed_shapes``).
    """
    builder = _Builder(shapes)
    linears = {layer.node: layer for layer in find_linear_layers(model.graph)}
    producers: dict[Space, str] = {}
    for node in model.graph:
        if node.op_type in ("Conv", "ConvTranspose") and node.domain == "":
            space = builder.space(node.outputs[0], 1)
        elif node in linears:
            out = linears[node].node.outputs[0]
            rank = len(shapes.get(out.name, ()))
            space = builder.space(out, rank - 1) if rank else None
        else:
            continue
        if space is not None:
            producers[space] = layer_name(node, node.inputs[1])
    context = _Context(model, linears)
    seen: set[Space] = set()
    while builder.queue:
        space = builder.queue.pop()
        if space in seen:
            continue
        seen.add(space)
        _propagate(builder, context, space)
    return _groups(builder, producers)


@dataclasses.dataclass
class _Context:
    model: ir.Model
    linears: dict[ir.Node, LinearLayer]


def _propagate(builder: _Builder, context: _Context, space: Space) -> None:
    value = space.value
    if value.is_graph_output():
        builder.block(space, f"{value.name!r} is a graph output (its shape must not change)")
    producer = value.producer()
    if producer is None:
        if value.is_graph_input():
            builder.block(space, f"{value.name!r} is a graph input")
        elif value.is_initializer():
            builder.block(space, f"the constant {value.name!r} carries these channels")
    else:
        _apply(builder, context, producer, space, None, list(producer.outputs).index(value))
    for use in value.uses():
        _apply(builder, context, use.node, space, use.idx, None)


def _apply(builder, context, node, space, input_index, output_index) -> None:
    if node.domain != "":
        builder.block(space, f"{node.domain}::{node.op_type} node {node.name!r} has no channel rule")
        return
    if node in context.linears:
        linear_rule(builder, context.linears[node], node, space, input_index, output_index)
        return
    rule = RULES.get(node.op_type)
    if rule is None:
        builder.block(space, f"{node.op_type} node {node.name!r} has no channel rule")
        return
    rule(builder, node, space, input_index, output_index)


def _groups(builder: _Builder, producers: dict[Space, str]) -> list[ChannelGroup]:
    """Units = connected channel entries; groups = spaces connected through shared units."""
    if builder.total == 0:
        return []
    a = np.concatenate(builder.edges_a) if builder.edges_a else np.array([], np.int64)
    b = np.concatenate(builder.edges_b) if builder.edges_b else np.array([], np.int64)
    entries = scipy.sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(builder.total, builder.total))
    _, labels = scipy.sparse.csgraph.connected_components(entries, directed=False)
    spaces = list(builder.spaces)
    unit_count = int(labels.max()) + 1
    rows, cols = [], []
    for index, space in enumerate(spaces):
        for label in np.unique(_space_labels(builder, space, labels)):
            rows.append(index)
            cols.append(len(spaces) + int(label))
    incidence = scipy.sparse.coo_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(spaces) + unit_count,) * 2
    )
    _, group_of = scipy.sparse.csgraph.connected_components(incidence, directed=False)
    by_group: dict[int, list[Space]] = {}
    for index, space in enumerate(spaces):
        by_group.setdefault(int(group_of[index]), []).append(space)
    groups = []
    for group_spaces in by_group.values():
        units: dict[int, dict[Space, np.ndarray]] = {}
        for space in group_spaces:
            element_labels = _space_labels(builder, space, labels)
            for label in np.unique(element_labels):
                units.setdefault(int(label), {})[space] = np.flatnonzero(element_labels == label)
        in_group = set(group_spaces)
        groups.append(
            ChannelGroup(
                index=len(groups),
                spaces=group_spaces,
                members=[m for m in builder.members if m.space in in_group],
                blocked=sorted({builder.blockers[s] for s in group_spaces if s in builder.blockers}),
                units=[units[k] for k in sorted(units)],
                producers=[producers[s] for s in group_spaces if s in producers],
            )
        )
    return groups


def _space_labels(builder: _Builder, space: Space, labels: np.ndarray) -> np.ndarray:
    index = builder.spaces[space]
    return labels[builder.offsets[index] : builder.offsets[index] + builder.sizes[index]]
