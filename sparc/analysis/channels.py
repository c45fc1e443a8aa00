"""Coupled channels: which channels of which tensors must be removed together.

A *space* is one axis of one value (``value``, ``axis``) whose entries are channels. Every
op touching a space links its entries to entries of other spaces through a rule from the
registry ``RULES`` (an explicit list: an op without a rule is never guessed about). Linking
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
import math
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir
import scipy.sparse
import scipy.sparse.csgraph

from sparc.analysis.linear import LinearLayer, find_linear_layers, layer_name
from sparc.ir_utils import constant_array

Shapes = Mapping[str, tuple[int, ...]]
RESHAPE_ELEMENT_LIMIT = 1 << 24


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


Rule = Callable[[_Builder, ir.Node, Space, int | None, int | None], None]
"""rule(builder, node, space, input_index, output_index): the space is input ``input_index``
of ``node`` (or its output ``output_index``); link it to the node's other operands."""


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
        _linear(builder, context.linears[node], node, space, input_index, output_index)
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


# -- rules -----------------------------------------------------------------------------


def _rank(builder: _Builder, value: ir.Value) -> int | None:
    shape = builder.shapes.get(value.name)
    return None if shape is None else len(shape)


def _identity_output(builder, node, space, input_index, output_index, axis_out=None):
    """Channels pass through unchanged: input axis a ↔ output axis ``axis_out`` (default a)."""
    if input_index is not None:
        builder.link(space, node.outputs[0], space.axis if axis_out is None else axis_out)
    else:
        builder.link(space, node.inputs[0], space.axis if axis_out is None else axis_out)


def _unary(builder, node, space, input_index, output_index):
    if input_index not in (None, 0):
        return  # a secondary input (e.g. Clip's bounds, LeakyRelu's nothing): constants only
    _identity_output(builder, node, space, input_index, output_index)


def _broadcast(builder, node, space, input_index, output_index):
    """Add/Sub/Mul/Div/Where/...: numpy broadcasting aligns trailing axes."""
    out = node.outputs[0]
    out_rank = _rank(builder, out)
    if out_rank is None:
        builder.block(space, f"the shape of {out.name!r} is unknown")
        return
    if input_index is not None:
        in_rank = _rank(builder, node.inputs[input_index])
        axis = space.axis + out_rank - in_rank
        if builder.size(out, axis) != builder.size(node.inputs[input_index], space.axis):
            builder.block(space, f"{node.op_type} node {node.name!r} broadcasts the channel axis")
            return
        target = builder.link(space, out, axis)
    else:
        target = space
        axis = space.axis
    if target is None:
        return
    for index, operand in enumerate(node.inputs):
        if operand is None or index == input_index:
            continue
        rank = _rank(builder, operand)
        if rank is None:
            builder.block(target, f"the shape of {operand.name!r} is unknown")
            continue
        operand_axis = axis - (out_rank - rank)
        if operand_axis < 0 or builder.size(operand, operand_axis) == 1:
            continue  # broadcast along the channels: nothing to slice
        if constant_array(operand) is not None:
            builder.member(target, node, index, operand_axis)
        else:
            builder.link(target, operand, operand_axis)


def _batch_norm(builder, node, space, input_index, output_index):
    if space.axis != 1 or input_index not in (None, 0):
        builder.block(space, f"BatchNormalization node {node.name!r} normalizes another axis")
        return
    target = builder.link(space, node.outputs[0], 1) if input_index == 0 else space
    if input_index is None:
        builder.link(space, node.inputs[0], 1)
    for index in (1, 2, 3, 4):
        builder.member(target, node, index, 0)


def _conv(builder, node, space, input_index, output_index):
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or space.axis != 1 or input_index not in (None, 0):
        builder.block(space, f"Conv node {node.name!r}: channels not on axis 1 or weight not constant")
        return
    groups = node.attributes.get_int("group", 1)
    out_space = space if input_index is None else None
    in_channels = builder.size(node.inputs[0], 1)
    depthwise = groups > 1 and groups == in_channels and weight.shape[0] == groups and weight.shape[1] == 1
    if groups > 1 and not depthwise:
        builder.block(space, f"Conv node {node.name!r} is a grouped convolution ({groups} groups)")
        return
    if depthwise:
        out_space = builder.link(space, node.outputs[0], 1) if input_index == 0 else space
        if input_index is None:
            builder.link(space, node.inputs[0], 1)
        builder.member(out_space, node, 0, 0, kind="group")
    if out_space is not None:
        builder.member(out_space, node, 1, 0, role="producer")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            builder.member(out_space, node, 2, 0)
    if input_index == 0 and not depthwise:
        builder.member(space, node, 1, 1, role="consumer")


def _conv_transpose(builder, node, space, input_index, output_index):
    if space.axis != 1 or node.attributes.get_int("group", 1) != 1 or input_index not in (None, 0):
        builder.block(space, f"ConvTranspose node {node.name!r}: grouped or channels not on axis 1")
        return
    if input_index == 0:
        builder.member(space, node, 1, 0, role="consumer")
    else:
        builder.member(space, node, 1, 1, role="producer")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            builder.member(space, node, 2, 0)


def _linear(builder, layer: LinearLayer, node, space, input_index, output_index):
    rank = _rank(builder, node.outputs[0]) if output_index is not None else _rank(builder, node.inputs[0])
    last = (rank or 0) - 1
    weight_in_axis, weight_out_axis = (1, 0) if layer.transposed else (0, 1)
    if input_index == 0 and space.axis == last:
        builder.member(space, node, 1, weight_in_axis, role="consumer")
    elif output_index == 0 and space.axis == last:
        builder.member(space, node, 1, weight_out_axis, role="producer")
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            builder.member(space, node, 2, 0)
    elif space.axis < last - (1 if node.op_type == "Gemm" else 0) or (node.op_type == "MatMul" and space.axis < last):
        _identity_output(builder, node, space, input_index, output_index)
    else:
        builder.block(space, f"{node.op_type} node {node.name!r} reads channels on an unsupported axis")


def _matmul_activations(builder, node, space, input_index, output_index):
    """MatMul of two activations (attention): batch axes pass through, K is contracted."""
    a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
    ra, rb, ro = _rank(builder, a), _rank(builder, b), _rank(builder, out)
    if None in (ra, rb, ro) or min(ra, rb) < 2:
        builder.block(space, f"MatMul node {node.name!r} has operands of unknown rank")
        return
    if output_index is not None:
        axis = space.axis
        if axis < ro - 2:
            builder.link(space, a, axis - (ro - ra)) if axis - (ro - ra) >= 0 else None
            builder.link(space, b, axis - (ro - rb)) if axis - (ro - rb) >= 0 else None
        elif axis == ro - 2:
            builder.link(space, a, ra - 2)
        else:
            builder.link(space, b, rb - 1)
        return
    rank = ra if input_index == 0 else rb
    axis = space.axis
    if axis < rank - 2:
        builder.link(space, out, axis + ro - rank)
    elif input_index == 0 and axis == ra - 1 or input_index == 1 and axis == rb - 2:
        other, other_axis = (b, rb - 2) if input_index == 0 else (a, ra - 1)
        builder.link(space, other, other_axis)
    elif input_index == 0:
        builder.link(space, out, ro - 2)
    else:
        builder.link(space, out, ro - 1)


def _concat(builder, node, space, input_index, output_index):
    axis = node.attributes.get_int("axis", 0)
    rank = _rank(builder, node.outputs[0])
    axis = axis % rank if rank else axis
    if axis != space.axis:
        for operand in [*node.inputs, node.outputs[0]]:
            if operand is not space.value:
                builder.link(space, operand, space.axis)
        return
    sizes = [builder.size(v, axis) for v in node.inputs]
    if None in sizes:
        builder.block(space, f"Concat node {node.name!r} has inputs of unknown size")
        return
    offsets = np.cumsum([0, *sizes])
    if input_index is not None:
        builder.link(space, node.outputs[0], axis, mapping=offsets[input_index] + np.arange(sizes[input_index]))
        return
    for k, operand in enumerate(node.inputs):
        builder.link(space, operand, axis, a_index=offsets[k] + np.arange(sizes[k]), mapping=np.arange(sizes[k]))


def _split(builder, node, space, input_index, output_index):
    axis = node.attributes.get_int("axis", 0)
    rank = _rank(builder, node.inputs[0])
    axis = axis % rank if rank else axis
    if input_index not in (None, 0):
        return
    if axis != space.axis:
        for operand in [node.inputs[0], *node.outputs]:
            if operand is not space.value:
                builder.link(space, operand, space.axis)
        return
    sizes = [builder.size(v, axis) for v in node.outputs]
    if None in sizes:
        builder.block(space, f"Split node {node.name!r} has outputs of unknown size")
        return
    offsets = np.cumsum([0, *sizes])
    source = space if input_index == 0 else builder.link(
        space, node.inputs[0], axis, mapping=offsets[output_index] + np.arange(sizes[output_index])
    )
    if source is None:
        return
    for k, out in enumerate(node.outputs):
        builder.link(source, out, axis, a_index=offsets[k] + np.arange(sizes[k]), mapping=np.arange(sizes[k]))
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        builder.member(source, node, 1, 0, kind="split")
    elif node.attributes.get("split") is not None:
        builder.block(source, f"Split node {node.name!r} gives sizes as an attribute (opset < 13)")


def _slice(builder, node, space, input_index, output_index):
    if input_index not in (None, 0):
        return
    starts, ends = constant_array(node.inputs[1]), constant_array(node.inputs[2])
    axes = constant_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = constant_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    rank = _rank(builder, node.inputs[0])
    if starts is None or ends is None or rank is None:
        builder.block(space, f"Slice node {node.name!r} has dynamic bounds")
        return
    axes = np.arange(len(starts)) if axes is None else axes % rank
    if space.axis not in axes:
        _identity_output(builder, node, space, input_index, output_index)
        return
    position = int(np.flatnonzero(axes == space.axis)[0])
    size = builder.size(node.inputs[0], space.axis)
    if steps is not None and steps[position] != 1:
        builder.block(space, f"Slice node {node.name!r} steps over the channels")
        return
    start, stop, _ = slice(int(starts[position]), int(ends[position])).indices(size)
    inner = np.arange(start, stop)
    if input_index == 0:
        target = builder.link(space, node.outputs[0], space.axis, a_index=inner, mapping=np.arange(len(inner)))
        source = space
    else:
        source = builder.link(space, node.inputs[0], space.axis, mapping=inner)
        target = space
    if source is not None and target is not None:
        builder.member(source, node, 1, position, kind="slice_bounds")


def _pool(builder, node, space, input_index, output_index):
    if space.axis != 1 or input_index not in (None, 0):
        builder.block(space, f"{node.op_type} node {node.name!r} pools over the channels")
        return
    _identity_output(builder, node, space, input_index, output_index)


def _reduce(builder, node, space, input_index, output_index):
    if input_index not in (None, 0):
        return
    rank = _rank(builder, node.inputs[0])
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        axes = None if array is None else array.tolist()
    if axes is None or rank is None:
        builder.block(space, f"{node.op_type} node {node.name!r} reduces unknown axes")
        return
    axes = sorted(int(a) % rank for a in axes)
    keep = node.attributes.get_int("keepdims", 1)
    if input_index == 0:
        axis = space.axis
        if axis in axes:
            builder.block(space, f"{node.op_type} node {node.name!r} reduces over the channels")
            return
        out_axis = axis if keep else axis - sum(1 for a in axes if a < axis)
        builder.link(space, node.outputs[0], out_axis)
    else:
        in_axis = space.axis
        if not keep:
            for a in axes:
                if a <= in_axis:
                    in_axis += 1
        builder.link(space, node.inputs[0], in_axis)


def _transpose(builder, node, space, input_index, output_index):
    perm = list(node.attributes.get_ints("perm", []))
    rank = _rank(builder, node.inputs[0])
    if not perm and rank:
        perm = list(range(rank))[::-1]
    if input_index == 0:
        builder.link(space, node.outputs[0], perm.index(space.axis))
    else:
        builder.link(space, node.inputs[0], perm[space.axis])


def _reshape_like(builder, node, space, input_index, output_index):
    """Reshape/Flatten/Squeeze/Unsqueeze, from the concrete shapes on both sides.

    Element k of the source sits at the same flat position in the target. The channel c of
    each element and its coordinate along each target axis are compared; the outermost
    target axis whose coordinate is a function of c (same channel or a head containing it),
    or determines c (the channel spread over features), carries the channels.
    """
    if input_index not in (None, 0):
        return
    source, target = (node.inputs[0], node.outputs[0]) if input_index == 0 else (node.outputs[0], node.inputs[0])
    before, after = builder.shapes.get(source.name), builder.shapes.get(target.name)
    if before is None or after is None or math.prod(before) != math.prod(after):
        builder.block(space, f"{node.op_type} node {node.name!r} has operands of unknown shape")
        return
    if math.prod(before) > RESHAPE_ELEMENT_LIMIT:
        builder.block(space, f"{node.op_type} node {node.name!r} is too large to analyse")
        return
    flat = np.arange(math.prod(before))
    channel = (flat // math.prod(before[space.axis + 1 :])) % before[space.axis]
    for axis in range(len(after)):
        if after[axis] == 1:
            continue
        coordinate = (flat // math.prod(after[axis + 1 :])) % after[axis]
        keys = np.unique(channel * after[axis] + coordinate)  # the distinct (channel, coordinate) pairs, sorted
        pairs = np.stack([keys // after[axis], keys % after[axis]])
        coord_of_channel = len(np.unique(pairs[0])) == pairs.shape[1]
        channel_of_coord = len(np.unique(pairs[1])) == pairs.shape[1]
        if coord_of_channel or channel_of_coord:
            mapped = builder.link(space, target, axis, a_index=pairs[0], mapping=pairs[1])
            if mapped is not None and node.op_type == "Reshape":
                out_space = mapped if input_index == 0 else space
                builder.member(out_space, node, 1, out_space.axis, kind="shape")
            return
    builder.block(space, f"{node.op_type} node {node.name!r} mixes the channels with other axes")


def _shape_only(builder, node, space, input_index, output_index):
    """Shape reads sizes, not values: shapes computed from it follow the pruned size."""


def _normalization(builder, node, space, input_index, output_index):
    """LayerNormalization/Softmax/...: fine unless they normalize over the channel axis."""
    rank = _rank(builder, node.inputs[0])
    axis = node.attributes.get_int("axis", -1) % (rank or 1)
    normalized = range(axis, rank) if node.op_type in ("LayerNormalization", "RMSNormalization") else [axis]
    if space.axis in normalized:
        builder.block(space, f"{node.op_type} node {node.name!r} normalizes over the channels")
        return
    if input_index in (None, 0):
        _identity_output(builder, node, space, input_index, output_index)


def _blocked(reason: str) -> Rule:
    def rule(builder, node, space, input_index, output_index):
        builder.block(space, f"{node.op_type} node {node.name!r}: {reason}")

    return rule


UNARY_OPS = (
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Erf", "Softplus", "Softsign", "Mish", "Clip", "Neg", "Abs", "Exp",
    "Log", "Sqrt", "Reciprocal", "Identity", "Dropout", "Cast", "IsNaN", "Not", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos",
)
BROADCAST_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "And", "Or")

RULES: dict[str, Rule] = {
    **{op: _unary for op in UNARY_OPS},
    **{op: _broadcast for op in BROADCAST_OPS},
    "BatchNormalization": _batch_norm,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul_activations,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "GlobalAveragePool": _pool,
    "GlobalMaxPool": _pool,
    "AveragePool": _pool,
    "MaxPool": _pool,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "ReduceMax": _reduce,
    "Transpose": _transpose,
    "Reshape": _reshape_like,
    "Flatten": _reshape_like,
    "Squeeze": _reshape_like,
    "Unsqueeze": _reshape_like,
    "LayerNormalization": _normalization,
    "Softmax": _normalization,
    "Shape": _shape_only,
    "Gather": _blocked("indexes the channels"),
}
