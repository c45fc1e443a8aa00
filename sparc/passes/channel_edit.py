"""Applying a channel plan (:mod:`sparc.passes.channel_crop`): every member of a group is cut
to the kept channels (weights, biases, BatchNorm statistics, per-channel constants, Reshape
shapes, Split sizes, Slice bounds, depthwise ``group``), all new tensors computed and checked
before the graph changes; optionally each consumer's bias absorbs the removed channels' mean
contribution, and linear / 1×1-conv consumers are refitted by least squares on calibration
statistics (only where there are at least ``MIN_ROWS_PER_UNKNOWN`` rows per unknown).
Every cropped value's producer notes which original channels the value kept (``KEPT_KEY``).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir

from sparc.analysis.channels import Member, Space
from sparc.analysis.linear import find_linear_layers
from sparc.ir_utils import constant_array
from sparc.measure.reducers import ChannelStats, Gram
from sparc.passes import edit

KEPT_KEY = "sparc.kept_channels"  # node metadata: {output name: {"axis": a, "kept": [...]}}
REFIT_DAMPING = 1e-3
MIN_ROWS_PER_UNKNOWN = 4  # calibration rows per refitted weight row


@dataclasses.dataclass
class ConsumerStats:
    """What calibration tells about the channels a consumer reads."""

    channels: ChannelStats
    gram: Gram | None = None

    @property
    def l2(self) -> np.ndarray:
        return self.channels.l2

    @property
    def mean(self) -> np.ndarray:
        return self.channels.mean


def refittable(member: Member) -> bool:
    """Consumers whose weights least squares can refit: linear layers and 1×1 convolutions."""
    node = member.node
    if node.op_type == "Conv":
        weight = constant_array(node.inputs[1])
        return node.attributes.get_int("group", 1) == 1 and weight is not None and all(k == 1 for k in weight.shape[2:])
    return node.op_type in ("MatMul", "Gemm")


def _well_determined(stats, kept: np.ndarray) -> bool:
    """Least squares over |K|+1 unknowns needs clearly more calibration rows than that;
    with fewer (a classifier after Flatten, few samples) the refit fits noise."""
    return stats.gram.rows >= MIN_ROWS_PER_UNKNOWN * (len(kept) + 1)


def apply_plan(graph, plan, stats, compensate: bool, reconstruct: bool) -> None:
    """Cut every planned group; edits of one tensor by several groups compose.

    All new tensors are computed (and anything unsupported raised) before the graph changes.
    """
    kept: dict[Space, np.ndarray] = {}
    sizes: dict[Space, int] = {}
    members: list[Member] = []
    for group, removed in plan:
        kept.update(group.kept_indices(set(removed)))
        sizes.update({space: group.size(space) for space in group.spaces})
        members += group.members
    cuts: dict[tuple[ir.Node, int], list[tuple[int, np.ndarray, object]]] = {}
    deltas: dict[ir.Node, np.ndarray] = {}
    steps = []
    for member in members:
        node, index = member.node, member.index
        if member.kind == "slice":
            if constant_array(node.inputs[index]) is None:
                continue
            refit = None
            if reconstruct and member.role == "consumer" and refittable(member) and _well_determined(
                stats[member.space.value.name], kept[member.space]
            ):
                refit, delta = _refit(node, member, kept[member.space], stats[member.space.value.name])
            elif compensate and member.role == "consumer":
                delta = _compensation(node, member, kept[member.space], stats)
            else:
                delta = None
            cuts.setdefault((node, index), []).append((member.axis, kept[member.space], refit))
            if delta is not None:
                deltas[node] = deltas.get(node, 0) + delta
        elif member.kind == "group":
            count = len(kept[member.space])
            steps.append(lambda node=node, count=count: node.attributes.__setitem__("group", ir.AttrInt64("group", count)))
        elif member.kind == "shape":
            steps.append(_shape_edit(graph, node, index, member.axis, len(kept[member.space])))
        elif member.kind == "split":
            steps.append(_split_edit(graph, node, kept[member.space]))
        elif member.kind == "slice_bounds":
            steps.append(_slice_edit(graph, node, member, kept[member.space], sizes[member.space]))
    biases = {node: _bias_slot(graph, node) for node in deltas}
    for node, (slot_node, slot_index) in biases.items():
        if slot_node is not None:
            cuts.setdefault((slot_node, slot_index), [])
    tensors = {}
    for (node, index), slices in cuts.items():
        array = constant_array(node.inputs[index])
        if _is_float(node, index):
            array = array.astype(np.float64)
        for owner, (slot_node, slot_index) in biases.items():
            if (slot_node, slot_index) == (node, index):
                array = array + deltas[owner]
        for axis, indices, refit in sorted(slices, key=lambda cut: cut[2] is None):
            array = refit(array) if refit is not None else np.take(array, indices, axis=axis)
        tensors[(node, index)] = array
    for (node, index), array in tensors.items():
        edit.replace_initializer_input(graph, node, index, array, f"{node.name}_in{index}_cropped")
    for owner, (slot_node, _) in biases.items():
        if slot_node is None:
            _new_bias(graph, owner, _cut_like_outputs(graph, owner, deltas[owner], cuts))
    for step in steps:
        if step is not None:
            step()
    for space, indices in kept.items():
        _set_dim(space, len(indices))
        record_kept(space.value, space.axis, indices)


def record_kept(value: ir.Value, axis: int, kept: np.ndarray) -> None:
    """Note on ``value``'s producer which of the original channels along ``axis`` it still has
    (composed with an earlier crop), so recovery passes can compare with the original model."""
    node = value.producer()
    if node is None:
        return
    notes = json.loads(node.metadata_props.get(KEPT_KEY, "{}"))
    earlier = notes.get(value.name)
    indices = np.asarray(kept, np.int64)
    if earlier is not None and earlier["axis"] == axis:
        indices = np.asarray(earlier["kept"], np.int64)[indices]
    notes[value.name] = {"axis": int(axis), "kept": indices.tolist()}
    node.metadata_props[KEPT_KEY] = json.dumps(notes, separators=(",", ":"))


def kept_channels(value: ir.Value) -> tuple[int, np.ndarray] | None:
    """(axis, original channel indices) of a cropped value, or None if it was never cropped."""
    node = value.producer()
    if node is None or KEPT_KEY not in node.metadata_props:
        return None
    note = json.loads(node.metadata_props[KEPT_KEY]).get(value.name)
    return None if note is None else (note["axis"], np.asarray(note["kept"], np.int64))


def _cut_like_outputs(graph, node: ir.Node, delta: np.ndarray, cuts) -> np.ndarray:
    """A new bias for ``node`` keeps only the output channels its weight keeps (another group
    may be cutting the outputs of the layer whose inputs this delta compensates)."""
    if node.op_type == "Conv":
        index, axis = 1, 0
    else:
        layer = _layer(graph, node)
        index, axis = list(node.inputs).index(layer.weight), 0 if layer.transposed else 1
    for cut_axis, indices, _ in cuts.get((node, index), []):
        if cut_axis == axis:
            delta = np.take(delta, indices)
    return delta


def _is_float(node: ir.Node, index: int) -> bool:
    value = node.inputs[index]
    return value.dtype is not None and value.dtype.is_floating_point()


def _compensation(node, member: Member, kept: np.ndarray, stats):
    """mean(xᵢ)·ΣW[:, i] over removed channels i: what the consumer's output loses on average
    (None for consumers other than Conv and 2-D linear layers, e.g. ConvTranspose, whose lost
    contribution depends on the output position)."""
    weight = constant_array(node.inputs[member.index]).astype(np.float64)
    if node.op_type != "Conv" and weight.ndim != 2:
        return None
    mean = stats[member.space.value.name].mean
    removed = np.setdiff1d(np.arange(weight.shape[member.axis]), kept)
    if not len(removed):
        return None
    part = np.take(weight, removed, axis=member.axis)
    if node.op_type == "Conv":  # W [C_out, C_in, k...]: sum the kernel
        return part.sum(axis=tuple(range(2, part.ndim))) @ mean[removed]
    return mean[removed] @ (part if member.axis == 0 else part.T)


def _refit(node, member: Member, kept: np.ndarray, stats: ConsumerStats):
    """Least-squares weights for the kept inputs, and the bias change (module docstring).

    With f = [x_K, 1] and y = x·W: θ = E[f fᵀ]⁻¹ E[f xᵀ] W, whose first |K| rows are the new
    weight rows and whose last row is added to the bias.
    """
    gram = stats.gram.matrix / max(stats.gram.rows, 1)
    mean = stats.mean
    width = len(kept)
    features = np.zeros((width + 1, width + 1))
    features[:width, :width] = gram[np.ix_(kept, kept)]
    features[:width, width] = features[width, :width] = mean[kept]
    features[width, width] = 1.0
    features += REFIT_DAMPING * np.mean(np.diag(features)) * np.eye(width + 1)
    cross = np.vstack([gram[kept], mean[None]])

    def as_matrix(array):  # [C_in, C_out] view of the weight
        if node.op_type == "Conv":
            return array[:, :, 0, 0].T if array.ndim > 2 else array.T
        return array if member.axis == 0 else array.T

    weight = as_matrix(constant_array(node.inputs[member.index]).astype(np.float64))
    theta = np.linalg.solve(features, cross @ weight)

    def refit(array):
        rows = theta[:width]
        if node.op_type == "Conv":
            return rows.T.reshape(rows.shape[1], width, *array.shape[2:])
        return rows if member.axis == 0 else rows.T

    return refit, theta[width]


def _bias_slot(graph, node: ir.Node) -> tuple[ir.Node | None, int]:
    """Where ``node``'s bias lives: (node, input index), or (None, 0) if it has none."""
    if node.op_type in ("Conv", "Gemm"):
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            return node, 2
        return None, 0
    layer = _layer(graph, node)
    if layer.bias_node is not None:
        return layer.bias_node, list(layer.bias_node.inputs).index(layer.bias)
    return None, 0


def _new_bias(graph, node: ir.Node, delta: np.ndarray) -> None:
    if node.op_type == "Conv":
        node.resize_inputs(3)
        node.replace_input_with(2, edit.constant(graph, f"{node.name}_bias", delta))
        return
    edit.set_bias(graph, _layer(graph, node), delta)


def _layer(graph, node: ir.Node):
    return next(layer for layer in find_linear_layers(graph) if layer.node is node)


def _shape_edit(graph, node: ir.Node, index: int, position: int, size: int):
    """Set entry ``position`` of a Reshape's target shape to ``size`` when it is a constant."""
    shape_value = node.inputs[index]
    array = constant_array(shape_value)
    if array is not None:
        if array[position] in (-1, 0):
            return None
        new = array.copy()
        new[position] = size
        return lambda: edit.replace_initializer_input(graph, node, index, new, f"{node.name}_shape")
    producer = shape_value.producer()
    if producer is None or producer.op_type != "Concat":
        return None  # computed at run time from the (pruned) tensors' shapes
    offset = 0
    for k, piece in enumerate(producer.inputs):
        piece_array = constant_array(piece)
        length = piece_array.size if piece_array is not None else _length(piece)
        if length is None:
            return None
        if offset <= position < offset + length:
            if piece_array is None or piece_array.reshape(-1)[position - offset] in (-1, 0):
                return None
            new = piece_array.reshape(-1).copy()
            new[position - offset] = size
            return lambda: edit.replace_initializer_input(graph, producer, k, new.reshape(piece_array.shape), f"{producer.name}_piece")
        offset += length
    return None


def _length(value: ir.Value) -> int | None:
    """Entries of a 1-D piece of a shape Concat: its known shape, or an Unsqueeze of a scalar
    (the legacy exporters' ``Unsqueeze(Gather(Shape(x), i))``, which carry no shapes)."""
    if value.shape is not None and len(value.shape) == 1 and isinstance(value.shape[0], int):
        return value.shape[0]
    producer = value.producer()
    if producer is not None and producer.op_type == "Unsqueeze" and _rank(producer.inputs[0]) == 0:
        axes = constant_array(producer.inputs[1]) if len(producer.inputs) > 1 else None
        if axes is None and "axes" in producer.attributes:  # opset < 13
            axes = np.asarray(producer.attributes["axes"].as_ints())
        return None if axes is None else int(np.asarray(axes).size)
    return None


def _rank(value: ir.Value | None) -> int | None:
    """Rank of a shape-computation value: its known shape, a constant, or through Shape,
    Gather, Cast and Identity."""
    if value is None:
        return None
    if value.shape is not None:
        return len(value.shape)
    array = constant_array(value)
    if array is not None:
        return array.ndim
    producer = value.producer()
    if producer is None:
        return None
    if producer.op_type == "Shape":
        return 1
    if producer.op_type in ("Cast", "Identity"):
        return _rank(producer.inputs[0])
    if producer.op_type == "Gather":
        data, indices = _rank(producer.inputs[0]), _rank(producer.inputs[1])
        return None if data is None or indices is None else data - 1 + indices
    return None


def _split_edit(graph, node: ir.Node, kept: np.ndarray):
    """New Split sizes: how many kept channels fall in each old segment."""
    sizes = constant_array(node.inputs[1])
    offsets = np.cumsum([0, *sizes.tolist()])
    new = np.array([np.count_nonzero((kept >= a) & (kept < b)) for a, b in zip(offsets, offsets[1:])], np.int64)
    return lambda: edit.replace_initializer_input(graph, node, 1, new, f"{node.name}_split")


def _slice_edit(graph, node: ir.Node, member: Member, kept: np.ndarray, size: int):
    """New Slice bounds on the channel axis: positions of the old bounds among kept channels."""
    starts, ends = constant_array(node.inputs[1]).copy(), constant_array(node.inputs[2]).copy()
    position = member.axis
    start, stop, _ = slice(int(starts[position]), int(ends[position])).indices(size)
    starts[position] = np.count_nonzero(kept < start)
    ends[position] = starts[position] + np.count_nonzero((kept >= start) & (kept < stop))

    def apply():
        edit.replace_initializer_input(graph, node, 1, starts, f"{node.name}_starts")
        edit.replace_initializer_input(graph, node, 2, ends, f"{node.name}_ends")

    return apply


def _set_dim(space: Space, size: int) -> None:
    shape = space.value.shape
    if shape is not None and space.axis < len(shape):
        dims = list(shape)
        dims[space.axis] = size
        space.value.shape = ir.Shape(dims)
