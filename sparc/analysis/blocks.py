"""Transformer blocks along the hidden state, for pre-norm and post-norm models alike.

A block takes the hidden state x [batch, seq, d] and returns the next one through two
residual sublayers, attention first, then the MLP:
    pre-norm  (Llama, SmolLM2):  m = x + attn(norm(x));        y = m + mlp(norm(m))
    post-norm (BERT, MiniLM):    m = norm(x + attn(x));         y = norm(m + mlp(m))
The analysis finds the first residual Add whose branch holds the first attention Softmax:
its other operand is the first block's input. From there it walks block by block: the
residual Add reading x directly (its branch must hold a Softmax), the optional norm that is
the Add's only reader, then the MLP's residual Add reading m (no Softmax in its branch).
The walk stops at the first hidden state with no attention residual after it: that value is
the last block's output (the final norm's input in a pre-norm model).

Models without attention blocks (CNNs) split into stages instead (:func:`find_segments`):
from the first float graph input to the first residual join (an Add of two computed values,
one computed from the other), from join to join, and from the last join to the first graph
output. A model without residual joins is one stage.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from sparc.analysis.norms import find_norms
from sparc.errors import StructureError


@dataclasses.dataclass
class Block:
    """One block: hidden state ``input`` → ``output``; ``softmax`` is a transformer block's attention."""

    index: int
    input: ir.Value
    output: ir.Value
    softmax: ir.Node | None = None


def find_blocks(model: ir.Model) -> list[Block]:
    """The transformer blocks of ``model`` in order (module docstring); StructureError if none."""
    order = {node: i for i, node in enumerate(model.graph)}
    softmaxes = attention_softmaxes(model)
    if not softmaxes:
        raise StructureError("the graph has no attention Softmax (one whose probabilities a MatMul reads): "
                             "no attention blocks")
    norm_by_input = {norm.input: norm for norm in find_norms(model).values()}
    hidden = _first_block_input(softmaxes[0], order)
    blocks: list[Block] = []
    while True:
        attention = _residual_add(hidden, order, with_softmax=True)
        if attention is None:
            break
        add, softmax = attention
        middle = _after_residual(add, norm_by_input, post_norm=True)
        post_norm = middle is not add.outputs[0]
        mlp = _residual_add(middle, order, with_softmax=False)
        if mlp is None:
            raise StructureError(
                f"block {len(blocks)}: no MLP residual Add reads {middle.name!r} after the "
                f"attention residual {add.name!r}"
            )
        output = _after_residual(mlp[0], norm_by_input, post_norm=post_norm)
        blocks.append(Block(len(blocks), hidden, output, softmax))
        hidden = output
    if not blocks:
        raise StructureError("no attention block with a residual connection found")
    return blocks


def find_segments(model: ir.Model) -> list[Block]:
    """Transformer blocks when the model has attention, else the stages between residual joins."""
    if attention_softmaxes(model):
        return find_blocks(model)
    return find_stages(model)


def attention_softmaxes(model: ir.Model) -> list[ir.Node]:
    """Softmaxes whose probabilities reach a MatMul within two ops (a NaN guard ``Where``, a Cast,
    a Dropout): attention, not a classifier's output."""

    def feeds_matmul(value: ir.Value, depth: int = 2) -> bool:
        return any(c.op_type == "MatMul" or (depth and any(feeds_matmul(o, depth - 1) for o in c.outputs))
                   for c in value.consumers())

    return [n for n in model.graph if n.op_type == "Softmax" and n.domain == "" and feeds_matmul(n.outputs[0])]


def find_stages(model: ir.Model) -> list[Block]:
    """The stages of a model without attention (module docstring); StructureError if it has no float input."""
    floats = [v for v in model.graph.inputs if v.dtype is not None and v.dtype.is_floating_point()]
    if not floats or not model.graph.outputs:
        raise StructureError("the model has no float input to split into stages")
    joins = [n.outputs[0] for n in model.graph if _is_add(n) and _is_residual_join(n)]
    bounds = [floats[0], *joins, model.graph.outputs[0]]
    return [Block(i, start, end) for i, (start, end) in enumerate(zip(bounds, bounds[1:]))]


def _is_residual_join(add: ir.Node) -> bool:
    """An Add of two computed values where one is computed from the other (a skip connection)."""
    first, second = add.inputs
    if first.const_value is not None or second.const_value is not None:
        return False
    return bool(descendants(first) & ancestors(second)) or bool(descendants(second) & ancestors(first))


def nodes_between(start: ir.Value, end: ir.Value) -> set[ir.Node]:
    """Nodes on some path from ``start`` to ``end``: descendants of start ∩ ancestors of end."""
    return descendants(start) & ancestors(end)


def descendants(value: ir.Value) -> set[ir.Node]:
    """Every node that reads ``value``, directly or through other nodes."""
    seen: set[ir.Node] = set()
    stack = [use.node for use in value.uses()]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(use.node for out in node.outputs for use in out.uses())
    return seen


def ancestors(value: ir.Value) -> set[ir.Node]:
    """Every node whose output ``value`` is computed from (its producer included)."""
    seen: set[ir.Node] = set()
    stack = [value.producer()] if value.producer() is not None else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(v.producer() for v in node.inputs if v is not None and v.producer() is not None)
    return seen


def _first_block_input(softmax: ir.Node, order: dict[ir.Node, int]) -> ir.Value:
    """The operand of the first residual Add after ``softmax`` that does not come from it."""
    after = descendants(softmax.outputs[0])
    for add in sorted((n for n in after if _is_add(n)), key=order.__getitem__):
        inside = [v for v in add.inputs if v.producer() in after]
        outside = [v for v in add.inputs if v.producer() not in after]
        if len(inside) == 1 and len(outside) == 1 and outside[0].const_value is None:
            if softmax in descendants(outside[0]):
                return outside[0]
    raise StructureError(
        f"no residual Add joins the attention Softmax {softmax.name!r} back to the hidden state"
    )


def _residual_add(hidden: ir.Value, order, *, with_softmax: bool) -> tuple[ir.Node, ir.Node | None] | None:
    """The Add reading ``hidden`` directly whose other operand is computed from it.

    With ``with_softmax`` the branch must hold exactly one Softmax (returned); without, none.
    """
    found = []
    for use in hidden.uses():
        add = use.node
        if not _is_add(add) or add.inputs[0] is add.inputs[1]:
            continue
        branch = add.inputs[1 - use.idx]
        inner = nodes_between(hidden, branch)
        if not inner:
            continue
        softmaxes = sorted((n for n in inner if n.op_type == "Softmax"), key=order.__getitem__)
        if with_softmax and len(softmaxes) == 1:
            found.append((add, softmaxes[0]))
        elif not with_softmax and not softmaxes:
            found.append((add, None))
    if len(found) > 1:
        names = ", ".join(repr(add.name) for add, _ in found)
        raise StructureError(f"hidden state {hidden.name!r} feeds several residual Adds: {names}")
    return found[0] if found else None


def _after_residual(add: ir.Node, norm_by_input, *, post_norm: bool) -> ir.Value:
    """The Add's output, or in a post-norm block its norm's output when the norm is its only reader.

    A post-norm block is recognised at its attention residual; the MLP residual of a pre-norm
    block may also be read by a norm alone (the final norm), which is not part of the block.
    """
    out = add.outputs[0]
    norm = norm_by_input.get(out)
    if post_norm and norm is not None and all(use.node in norm.nodes for use in out.uses()):
        return norm.output
    return out


def _is_add(node: ir.Node) -> bool:
    return node.op_type == "Add" and node.domain == "" and len(node.inputs) == 2
