"""The routers' ONNX subgraph: features, scores, top-k selection, gathering and scattering of
tokens, appended to the graph through an ``onnx_ir`` tape (see :mod:`sparc.passes.token_router`)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx_ir as ir

from sparc.algorithms import router_mlp
from sparc.analysis.blocks import Block
from sparc.analysis.sequence import ADDITIVE_MASK_FLOOR, SequenceValue
from sparc.errors import StructureError
from sparc.ir_utils import add_initializer

BIG = 1e30
EPS = 1e-6


class RouterState:
    """What routers share: the model and the token order chosen at each block."""

    def __init__(self, model: ir.Model, opset: int, blocks: list[Block]):
        self.model, self.opset = model, opset
        self.inputs = {block.index: block.input for block in blocks}
        self.orders: dict[int, ir.Value] = {}


class RouterOps:
    """Appends the router's nodes to the graph, named ``<prefix>/<op>_<i>``."""

    def __init__(self, state: RouterState, prefix: str):
        self.graph, self.opset, self.prefix = state.model.graph, state.opset, prefix
        self.tape = ir.tape.Tape(self.graph)
        self.count = 0
        self.norm = self.attention = self.features_value = self.valid_float = None
        self.has_attention = False

    def op(self, op_type: str, *inputs, outputs: int = 1, **attributes):
        """Append ``op_type`` to the graph (through the tape); its node and outputs are named
        ``<prefix>/<op>_<i>`` (``_<k>`` appended per output when there are several)."""
        self.count += 1
        name = f"{self.prefix}/{op_type}_{self.count}"
        values = self.tape.op_multi_out(op_type, list(inputs), attributes, num_outputs=outputs, name=name)
        for i, out in enumerate(values):
            out.name = name + (f"_{i}" if outputs > 1 else "")
        return values[0] if outputs == 1 else tuple(values)

    def const(self, name: str, array) -> ir.Value:
        return add_initializer(self.graph, f"{self.prefix}/{name}", np.asarray(array))

    def i64(self, values) -> ir.Value:
        return self.const("i64", np.array(values, np.int64))

    def scalar_i64(self, value: int) -> ir.Value:
        return self.const("i64", np.array(value, np.int64))

    def f32(self, value: float) -> ir.Value:
        return self.const("f32", np.array(value, np.float32))

    def reduce(self, op_type: str, x: ir.Value, axes: list[int], keepdims: int) -> ir.Value:
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.i64(axes), keepdims=keepdims)
        return self.op(op_type, x, axes=axes, keepdims=keepdims)

    def dim(self, x: ir.Value, axis: int) -> ir.Value:
        """Size of axis ``axis`` of ``x`` as a 1-d int64 [1]."""
        return self.op("Gather", self.op("Shape", x), self.i64([axis]), axis=0)

    def batch_and(self, hidden: ir.Value, n: ir.Value) -> ir.Value:
        """The shape [batch, n]."""
        return self.op("Concat", self.dim(hidden, 0), n, axis=0)

    def positions(self, hidden: ir.Value, n: ir.Value) -> ir.Value:
        """float [batch, n]: 0 … n−1 in every row."""
        count = self.op("Squeeze", n, self.i64([0]))
        arange = self.op("Range", self.scalar_i64(0), count, self.scalar_i64(1))
        rows = self.op("Expand", self.op("Unsqueeze", arange, self.i64([0])), self.batch_and(hidden, n))
        return self.op("Cast", rows, to=ir.DataType.FLOAT)

    def validity(self, masks: list[SequenceValue], n: ir.Value, hidden: ir.Value) -> ir.Value:
        """bool [batch, n]: token i is not padding in any mask (diagonal or key mask > floor)."""
        valid = self.op("Expand", self.const("true", np.ones((1, 1), bool)), self.batch_and(hidden, n))
        for mask in masks:
            values = mask.value
            if mask.mask == "bool":
                values = self.op("Cast", values, to=ir.DataType.FLOAT)
            if len(mask.seq_axes) == 2:
                square = self.op("Mul", n, n)
                flat = self.op("Reshape", values, self.op("Concat", self.i64([0, -1]), square, axis=0))
                step = self.op("Add", n, self.i64([1]))
                diagonal = self.op("Slice", flat, self.i64([0]), square, self.i64([2]), step)
            else:
                diagonal = self.op("Reshape", values, self.op("Concat", self.i64([0, -1]), n, axis=0))
            best = self.reduce("ReduceMax", diagonal, [1], 0)
            floor = ADDITIVE_MASK_FLOOR if mask.mask == "additive" else 0.5
            valid = self.op("And", valid, self.op("Greater", best, self.f32(floor)))
        self.valid_float = self.op("Cast", valid, to=ir.DataType.FLOAT)
        return valid

    def features(self, hidden: ir.Value, positions: ir.Value, n: ir.Value, previous: Block | None,
                 previous_order: ir.Value | None) -> ir.Value:
        """[batch, n, 4]: position, log norm, log attention received, log relative update.

        When the previous block was routed, the tokens it skipped received no attention there
        and were not updated: their features say so.
        """
        weight = self.valid_float
        count = self.op("Max", self.reduce("ReduceSum", weight, [1], 1), self.f32(1.0))

        def centred_log(x):
            log = self.op("Log", self.op("Add", x, self.f32(EPS)))
            mean = self.op("Div", self.reduce("ReduceSum", self.op("Mul", log, weight), [1], 1), count)
            return self.op("Sub", log, mean)

        def row_norm(x):
            return self.op("Sqrt", self.reduce("ReduceSum", self.op("Mul", x, x), [2], 0))

        self.norm = row_norm(hidden)
        position = self.op("Div", positions, self.op("Cast", n, to=ir.DataType.FLOAT))
        zeros = self.op("Mul", position, self.f32(0.0))
        attention_feature = update_feature = zeros
        if previous is not None:
            probabilities = previous.softmax.outputs[0]
            if probabilities.shape is not None and len(probabilities.shape) == 4:
                self.attention = self.received(probabilities)
                if previous_order is not None:
                    self.attention = self.op("ScatterElements", zeros, previous_order, self.attention, axis=1)
                self.has_attention = True
                attention_feature = centred_log(self.attention)
            update = row_norm(self.op("Sub", hidden, previous.input))
            update_feature = centred_log(self.op("Div", update, self.op("Add", self.norm, self.f32(EPS))))
        columns = [position, centred_log(self.norm), attention_feature, update_feature]
        stacked = [self.op("Unsqueeze", c, self.i64([2])) for c in columns]
        self.features_value = self.op("Concat", *stacked, axis=2)
        return self.features_value

    def received(self, probabilities: ir.Value) -> ir.Value:
        """[batch, n]: Σ over heads and queries of P[b, h, q, j], as one product
        1[1, h·q] @ P.reshape(b, h·q, n): a matrix-vector product, where ONNX Runtime's
        ReduceSum over the middle axes is 10–40× slower."""
        shape = self.op("Shape", probabilities)
        rows = self.reduce("ReduceProd", self.op("Slice", shape, self.i64([1]), self.i64([3])), [0], 1)
        ones = self.op("Expand", self.f32(1.0), self.op("Concat", self.i64([1]), rows, axis=0))
        keys = self.op("Slice", shape, self.i64([3]), self.i64([4]))
        flat = self.op("Reshape", probabilities, self.op("Concat", self.i64([0, -1]), keys, axis=0))
        return self.op("Squeeze", self.op("MatMul", ones, flat), self.i64([1]))

    def score(self, kind: str, features: ir.Value, fitted: router_mlp.RouterMLP | None) -> ir.Value:
        if kind == "norm":
            return self.norm
        if kind == "attention":
            if not self.has_attention:
                raise StructureError("router='attention': the previous block's attention is not [b, h, n, n]")
            return self.attention
        w1, b1 = fitted.folded()
        hidden = self.op("Tanh", self.op("Add", self.op("MatMul", features, self.const("w1", w1.astype(np.float32))),
                                         self.const("b1", b1.astype(np.float32))))
        out = self.op("MatMul", hidden, self.const("w2", fitted.w2.astype(np.float32)))
        return self.op("Add", out, self.f32(fitted.b2))

    def kept_count(self, keep: float, n: ir.Value, forced: int) -> ir.Value:
        """k = min(n, max(1, forced, ⌈keep·n⌉)) as int64 [1], in exact integer arithmetic."""
        fraction = Fraction(keep).limit_denominator(10_000)
        scaled = self.op("Mul", n, self.i64([fraction.numerator]))
        ceil = self.op("Div", self.op("Add", scaled, self.i64([fraction.denominator - 1])),
                       self.i64([fraction.denominator]))
        return self.op("Min", self.op("Max", ceil, self.i64([max(1, forced)])), n)

    def forced(self, positions: ir.Value, n: ir.Value, keep_tokens: tuple[int, ...]) -> ir.Value | None:
        """bool [batch, n]: the token sits at one of ``keep_tokens`` (negative: from the end)."""
        forced = None
        length = self.op("Cast", n, to=ir.DataType.FLOAT)
        for position in keep_tokens:
            target = self.f32(float(position))
            if position < 0:
                target = self.op("Add", length, target)
            hit = self.op("Equal", positions, target)
            forced = hit if forced is None else self.op("Or", forced, hit)
        return forced

    def select(self, score: ir.Value, valid: ir.Value, forced: ir.Value | None, k: ir.Value) -> ir.Value:
        """int64 [batch, k]: positions of the top-k scores, in increasing order."""
        score = self.op("Where", valid, score, self.f32(-BIG))
        if forced is not None:
            score = self.op("Where", forced, self.f32(BIG), score)
        _, top = self.op("TopK", score, k, outputs=2, axis=1, largest=1, sorted=0)
        ascending, _ = self.op("TopK", self.op("Cast", top, to=ir.DataType.FLOAT), k,
                               outputs=2, axis=1, largest=0, sorted=1)
        return self.op("Cast", ascending, to=ir.DataType.INT64)

    def gather(self, use: SequenceValue, order: ir.Value, k: ir.Value, hidden: ir.Value) -> ir.Value:
        """``use.value`` at the kept positions along each sequence axis, per batch row (or the
        first k positions of an order-invariant value without a batch axis)."""
        value = use.value
        if use.slice_only:
            axes = list(use.seq_axes)
            return self.op("Slice", value, self.i64([0] * len(axes)), self.op("Concat", *[k] * len(axes), axis=0),
                           self.i64(axes))
        if use.batch_broadcast:
            ones = self.i64([1] * (use.rank - 1))
            value = self.op("Expand", value, self.op("Concat", self.dim(hidden, 0), ones, axis=0))
        index = self.op("Unsqueeze", order, self.i64([2]))
        for axis in use.seq_axes:
            if axis == 1:
                value = self.op("GatherND", value, index, batch_dims=1)
                continue
            perm = [0, axis] + [a for a in range(1, use.rank) if a != axis]
            value = self.op("Transpose", value, perm=perm)
            value = self.op("GatherND", value, index, batch_dims=1)
            value = self.op("Transpose", value, perm=[int(a) for a in np.argsort(perm)])
        return value

    def patch(self, use: SequenceValue, k: ir.Value) -> ir.Value:
        """A shape value with k in place of n at its length positions."""
        count = self.op("Cast", k, to=ir.DataType.from_numpy(use.dtype))
        if use.rank == 0:
            return self.op("Squeeze", count, self.i64([0]))
        where = np.zeros(use.size, bool)
        where[list(use.length_positions)] = True
        return self.op("Where", self.const("at_length", where), count, use.value)

    def scatter(self, hidden: ir.Value, end: ir.Value, order: ir.Value, region: set[ir.Node]) -> ir.Value:
        """Put the routed blocks' output for the kept tokens back into ``hidden``; rewire."""
        readers = [u for u in end.uses() if u.node not in region]
        batch = self.op("Squeeze", self.dim(hidden, 0), self.i64([0]))
        rows = self.op("Range", self.scalar_i64(0), batch, self.scalar_i64(1))
        rows = self.op("Expand", self.op("Unsqueeze", rows, self.i64([1])), self.op("Shape", order))
        pairs = self.op("Concat", self.op("Unsqueeze", rows, self.i64([2])),
                        self.op("Unsqueeze", order, self.i64([2])), axis=2)
        merged = self.op("ScatterND", hidden, pairs, end)
        # the full-length value: hidden's type, or the routed output's own (a graph output always
        # declares one; exporters that write no value_info leave hidden's unknown)
        merged.shape, merged.type = hidden.shape or end.shape, hidden.type or end.type
        for use in readers:
            use.node.replace_input_with(use.idx, merged)
        if end.is_graph_output():
            outputs = self.graph.outputs
            name = end.name
            end.name = f"{self.prefix}/kept_{name}"
            merged.name = name
            outputs[outputs.index(end)] = merged
        return merged
