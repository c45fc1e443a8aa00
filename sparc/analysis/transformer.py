"""The transformer structure of a graph: residual stream, pre-norms, readers, writers, head.

A pre-norm transformer is recognised from the graph alone, whatever exported it:
    v₀ = Σ embeddings (Gather of constant tables, summed by Adds)
    vᵢ₊₁ = Add(vᵢ, writerᵢ(...readersᵢ(normᵢ(vᵢ))...))       for each residual branch i
    logits = head(final_norm(v_L))
where every ``normᵢ`` is a normalization over the last axis (see ``sparc.analysis.norms``),
its output is read only by linear layers (the readers: Q/K/V projections, gate/up
projections, also with GQA or rotary embeddings behind them), and the branch output added to
the stream is a linear layer (the writer: output or down projection, MatMul+Add or Gemm).
The stream values are read by nothing but their norm, the next residual Add, and ``Shape``
nodes whose result is only gathered at other axes than the last (the batch and sequence sizes
a dynamic-axes export reads; slicing the stream leaves them as they are).

Anything else (post-norm models such as BERT, an unknown op reading the stream, a stream
value that is a graph output) is reported by :class:`StructureError` with the reason and
the node involved; the analysis never guesses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from sparc.analysis.linear import LinearLayer, find_linear_layers
from sparc.analysis.norms import Norm, find_norms
from sparc.errors import StructureError


@dataclasses.dataclass
class Embedding:
    """``Gather(table, indices)`` with a constant [vocab, d] table feeding the stream."""

    node: ir.Node
    table: ir.Value


@dataclasses.dataclass
class Branch:
    """One residual branch: v_out = Add(v_in, writer(... readers(norm(v_in)) ...))."""

    index: int
    norm: Norm
    readers: list[LinearLayer]
    writer: LinearLayer
    residual_add: ir.Node
    stream_in: ir.Value
    stream_out: ir.Value


@dataclasses.dataclass
class TransformerStructure:
    """The whole residual stream of a pre-norm transformer."""

    embeddings: list[Embedding]
    branches: list[Branch]
    final_norm: Norm
    head: LinearLayer
    hidden: int

    @property
    def stream(self) -> list[ir.Value]:
        """v₀ … v_L: the hidden state before each branch, then the final norm's input."""
        return [b.stream_in for b in self.branches] + [self.final_norm.input]

    @property
    def norms(self) -> list[Norm]:
        return [b.norm for b in self.branches] + [self.final_norm]

    @property
    def tied_embedding(self) -> Embedding | None:
        """The embedding whose table the head multiplies by (y = x·Eᵀ), if any.

        Tied means the same initializer, or a copy holding exactly Eᵀ (what constant folding
        of ``Transpose(E)`` leaves behind).
        """
        head = self.head
        for embedding in self.embeddings:
            if embedding.table is head.weight:
                return embedding
            table = embedding.table.const_value
            if table is not None and tuple(table.shape) == tuple(head.weight_kn().shape[::-1]):
                if np.array_equal(table.numpy().T, head.weight_kn()):
                    return embedding
        return None

    @property
    def head_tied(self) -> bool:
        return self.tied_embedding is not None


def find_transformer(model: ir.Model) -> TransformerStructure:
    """Recognise the pre-norm transformer structure of ``model`` (module docstring)."""
    norms = find_norms(model)
    linears = find_linear_layers(model.graph)
    by_output = {layer.output: layer for layer in linears}
    by_input: dict[ir.Value, list[LinearLayer]] = {}
    for layer in linears:
        by_input.setdefault(layer.input, []).append(layer)
    norm_by_input = {}
    for norm in norms.values():
        norm_by_input.setdefault(norm.input, []).append(norm)
    if not norm_by_input:
        raise StructureError("no normalization over the last axis found: not a transformer")
    start = _first_norm(model, norms).input
    embeddings = _embeddings(start)
    branches: list[Branch] = []
    value = start
    while True:
        norm = _single_norm(norm_by_input, value)
        others = [u.node for u in value.uses() if u.node not in norm.nodes and not _reads_leading_sizes(u.node)]
        if value.is_graph_output():
            raise StructureError(f"stream value {value.name!r} is a graph output")
        if not others:
            head = _head(norm, by_input)
            break
        add = _residual_add(value, others, norm)
        branch_value = add.inputs[1] if add.inputs[0] is value else add.inputs[0]
        writer = by_output.get(branch_value)
        if writer is None:
            producer = branch_value.producer()
            raise StructureError(
                f"the residual Add {add.name!r} adds {_describe(producer)}, not a linear layer"
            )
        readers = _readers(norm, by_input)
        branches.append(Branch(len(branches), norm, readers, writer, add, value, add.outputs[0]))
        value = add.outputs[0]
    if not branches:
        raise StructureError("the stream has no residual branch before its final norm")
    hidden = head.in_features
    return TransformerStructure(embeddings, branches, norm, head, hidden)


def _first_norm(model: ir.Model, norms: dict[ir.Value, Norm]) -> Norm:
    order = {node: i for i, node in enumerate(model.graph)}
    first = min(norms.values(), key=lambda n: order.get(n.nodes[0], len(order)))
    for use in first.output.uses():
        if use.node.op_type == "Add":
            raise StructureError(
                f"post-norm model: the output of the first norm ({first.nodes[-1].name!r}) "
                f"feeds the residual Add {use.node.name!r}; slicing the stream needs pre-norm "
                "blocks (use target='ffn' to slice MLP units instead)"
            )
    return first


def _embeddings(start: ir.Value) -> list[Embedding]:
    """The Gathers of constant tables summed into the first stream value."""
    producer = start.producer()
    if producer is None:
        raise StructureError(f"the stream starts at the graph input {start.name!r}, not an embedding")
    if producer.op_type == "Gather" and producer.domain == "":
        table = producer.inputs[0]
        if (
            table is not None
            and table.const_value is not None
            and len(table.shape) == 2
            and producer.attributes.get_int("axis", 0) == 0
        ):
            return [Embedding(producer, table)]
    if producer.op_type == "Add" and producer.domain == "" and len(start.uses()) >= 1:
        return [e for value in producer.inputs for e in _embeddings(value)]
    raise StructureError(
        f"the stream starts at {_describe(producer)}, not at embedding lookups (Gather of a table)"
    )


def _single_norm(norm_by_input, value: ir.Value) -> Norm:
    found = norm_by_input.get(value, [])
    if len(found) != 1:
        readers = ", ".join(sorted({_describe(u.node) for u in value.uses()}))
        raise StructureError(
            f"stream value {value.name!r} should be read by exactly one norm; it is read by {readers}"
        )
    return found[0]


def _reads_leading_sizes(node: ir.Node) -> bool:
    """A Shape node whose result is only gathered at constant axes other than the last."""
    if node.op_type != "Shape" or node.domain != "" or node.attributes or node.outputs[0].is_graph_output():
        return False
    rank = node.inputs[0].shape.rank() if node.inputs[0].shape is not None else None
    uses = node.outputs[0].uses()
    for use in uses:
        gather = use.node
        if gather.op_type != "Gather" or gather.domain != "" or use.idx != 0 or rank is None:
            return False
        index = gather.inputs[1].const_value.numpy() if gather.inputs[1].const_value is not None else None
        if index is None or np.any((index % rank) == rank - 1):
            return False
    return bool(uses)


def _residual_add(value: ir.Value, others: list[ir.Node], norm: Norm) -> ir.Node:
    if len(others) != 1 or others[0].op_type != "Add" or others[0].domain != "":
        readers = ", ".join(_describe(n) for n in others)
        raise StructureError(
            f"stream value {value.name!r} is read by {readers} besides its norm "
            f"({norm.nodes[-1].name!r}); expected exactly one residual Add"
        )
    return others[0]


def _readers(norm: Norm, by_input) -> list[LinearLayer]:
    readers = by_input.get(norm.output, [])
    reader_nodes = {r.node for r in readers}
    for use in norm.output.uses():
        if use.node not in reader_nodes:
            raise StructureError(
                f"the output of norm {norm.nodes[-1].name!r} is read by {_describe(use.node)}, "
                "not only by linear layers"
            )
    if not readers:
        raise StructureError(f"the output of norm {norm.nodes[-1].name!r} feeds no linear layer")
    if norm.output.is_graph_output():
        raise StructureError(f"the output of norm {norm.nodes[-1].name!r} is a graph output")
    return readers


def _head(norm: Norm, by_input) -> LinearLayer:
    readers = _readers(norm, by_input)
    if len(readers) != 1:
        raise StructureError(f"the final norm {norm.nodes[-1].name!r} feeds {len(readers)} layers")
    return readers[0]


def _describe(node: ir.Node | None) -> str:
    if node is None:
        return "a graph input"
    return f"{node.op_type} node {node.name!r}"
