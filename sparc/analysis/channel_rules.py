"""The channel rules: for each op, how the channel entries of one operand link to those of
the others (see :mod:`sparc.analysis.channels` for spaces, members and groups).

A rule is called as ``rule(builder, node, space, input_index, output_index)`` for a space on
the node's input ``input_index`` (or output ``output_index``); it links entries through
``builder.link``, records the constants to slice with ``builder.member`` and blocks what it
does not support with ``builder.block``, giving the reason. ``RULES`` is the explicit registry:
an op missing from it is never guessed about.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from sparc.analysis.linear import LinearLayer
from sparc.ir_utils import constant_array

Rule = Callable[..., None]
RESHAPE_ELEMENT_LIMIT = 1 << 24


def _rank(builder, value: ir.Value) -> int | None:
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


def linear_rule(builder, layer: LinearLayer, node, space, input_index, output_index):
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
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Erf", "Softplus", "Softsign", "Mish", "Clip", "Neg", "Abs", "Exp",
    "Log", "Sqrt", "Reciprocal", "Identity", "Dropout", "Cast", "IsNaN", "Not", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos",
)
BROADCAST_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "And", "Or",
                 "PRelu")  # PRelu: its slope broadcasts like a per-channel constant operand

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
