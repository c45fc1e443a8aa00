"""TokenRouter: each later transformer block runs on its important tokens only (FTP-style).

A router sits before every block b from ``start_block`` on (``sparc.analysis.blocks``); with n
tokens in the sequence:
1. k = min(n, max(1, ⌈keep_b·n⌉)) from the dynamic shape (exact integers: keep = p/q,
   k = (p·n + q − 1) div q).
2. A score per token: ``norm`` ‖hᵢ‖₂; ``attention`` the attention token i received in block
   b−1 (Σ over heads and queries; PoWER-BERT's significance); ``learned`` an MLP
   (``sparc.algorithms.router_mlp``) over four per-token features: relative position i/n, log ‖hᵢ‖ and
   log of the attention received in block b−1 (both centred over the row's valid tokens),
   and log ‖hᵢ − hᵢ⁽ᵇ⁻¹⁾‖/‖hᵢ‖, block b−1's relative update (a token block b−1 skipped received
   no attention and no update there, and its features say so). The MLP is fitted on
   calibration data, router by router on the model routed so far, to what skipping token i in
   block b costs: ½·(its own error, log ‖yᵢ − hᵢ‖/‖hᵢ‖, y leaving block b) + ½·(its value to
   the others, log of the attention it receives in block b), each standardised within the row.
   Padding tokens (read from any attention mask entering the block: the diagonal of an
   [.., n, n] mask, or a key mask [.., 1, n]) score −∞; ``keep_tokens`` positions +∞.
3. The top-k tokens, kept in their original order, index every value that enters the block
   (``sparc.analysis.sequence``): hidden state, masks in both axes, rotary tables, position
   ids are gathered per row; shape tensors holding n get k instead.
4. The block's output for the kept tokens is scattered into its input, so skipped tokens pass
   the block with their hidden state unchanged and rejoin the sequence for the next router.
``keep`` is one fraction for every block from ``start_block`` on, or a list with one per
block (1.0: no router there). ``start_block`` is a block index, or a fraction of the depth.
Everything a router adds is standard ONNX (TopK, GatherND, ScatterND, Reduce*), so any
runtime runs it. Cases that raise: no attention blocks; a value computed inside a block is
read outside it; a length-dependent value the analysis cannot cut; ``attention`` at block 0.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from fractions import Fraction

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparc.algorithms import router_mlp
from sparc.analysis.blocks import Block, find_blocks, nodes_between
from sparc.analysis.sequence import (
    SequenceValue,
    classify,
    input_sequence_axes,
    truncated,
)
from sparc.capture.kv_cache import find_kv_cache
from sparc.errors import RecipeError, StructureError
from sparc.measure.execute import exposing_runner
from sparc.passes.base import SparcPass, choice, integer, number, register
from sparc.passes.router_ops import EPS, RouterOps, RouterState

logger = logging.getLogger(__name__)

ROUTERS = ("learned", "norm", "attention")
HELD_OUT = 0.25


@register
class TokenRouter(SparcPass):
    """Insert token routers: later blocks run on the top-k tokens, the rest bypass them."""

    lossless = False
    needs_calibration = True

    def __init__(
        self,
        *,
        keep=0.5,
        start_block=None,
        router: str = "learned",
        keep_tokens=(0,),
        hidden: int = 16,
        **common,
    ):
        super().__init__(**common)
        self.keep = _keep(self, keep)
        self.start_block = _start(self, start_block)
        self.router = choice(self, "router", router, set(ROUTERS))
        self.keep_tokens = _positions(self, keep_tokens)
        self.hidden = integer(self, "hidden", hidden, low=1)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _refuse_kv_cache(model, self.name)
        blocks = find_blocks(model)
        start = self._start_index(len(blocks))
        schedule = self._schedule(len(blocks) - start)
        if self.router == "attention" and start == 0:
            raise RecipeError(f"{self.name}: router='attention' reads block start_block−1; start_block must be ≥ 1")
        opset = model.opset_imports.get("", 0)
        if opset < 13:
            raise StructureError(f"{self.name} needs ONNX opset ≥ 13, the model has {opset}")
        routed = [(start + offset, keep) for offset, keep in enumerate(schedule) if keep < 1.0]
        state = RouterState(model, opset, blocks)
        uses = self._probe(model, [blocks[index] for index, _ in routed])
        routers = [self._route(state, blocks, index, keep, uses[index]) for index, keep in routed]
        if routers:
            model.graph.sort()
            RemoveUnusedNodesPass()(model)
        self.details = {
            "blocks": len(blocks),
            "start_block": start,
            "router": self.router,
            "keep_per_block": [1.0] * start + schedule,
            "routers": routers,
        }
        return ir.passes.PassResult(model, modified=bool(routers))

    # -- options ------------------------------------------------------------------------

    def _start_index(self, depth: int) -> int:
        start = self.start_block
        if start is None:
            start = math.ceil(depth / 3)
        elif isinstance(start, float):
            start = round(start * depth)
        if not 0 <= start < depth:
            raise RecipeError(f"{self.name}: start_block {start} is outside the model's {depth} blocks")
        return start

    def _schedule(self, count: int) -> list[float]:
        if isinstance(self.keep, float):
            return [self.keep] * count
        if len(self.keep) != count:
            raise RecipeError(
                f"{self.name}: keep lists {len(self.keep)} fractions; blocks {count} from "
                f"start_block on need one each"
            )
        return list(self.keep)

    # -- calibration --------------------------------------------------------------------

    def _probe(self, model: ir.Model, blocks: list[Block]) -> dict[int, list[SequenceValue]]:
        """Classify what enters each block (``sparc.analysis.sequence``) from one pair of runs.

        The runs use two calibration rows at their full length n and cut to n − max(2, n/4);
        what enters a block is the same before and after earlier blocks are routed, except
        the hidden state, which routing replaces by an equivalent value.
        """
        entering = {}
        for block in blocks:
            region = nodes_between(block.input, block.output)
            _check_closed(region, block.output)
            entering[block.index] = _entering(model.graph, region)
        batch = self.calibration.batches[0]
        feeds = {k: np.concatenate([v[:2]] * (2 if len(v) < 2 else 1))[:2] for k, v in batch.items()}
        names = list(dict.fromkeys(v.name for values in entering.values() for v in values))
        runner = exposing_runner(model, names, threads=self.threads)
        long = runner.run(feeds)
        length = long[blocks[0].input.name].shape[1]
        if length < 8:
            raise StructureError(f"calibration sequences have {length} tokens; routing needs ≥ 8 to probe")
        axes = input_sequence_axes(model.graph.inputs, feeds, length)
        short = runner.run(truncated(feeds, axes, length - max(2, length // 4)))
        self._length = length
        uses = {}
        for block in blocks:
            found = classify(entering[block.index], [long, short], (length, short[block.input.name].shape[1]), batch=2)
            if not any(u.value is block.input and u.seq_axes == (1,) for u in found):
                raise StructureError(f"the hidden state {block.input.name!r} has no sequence axis 1")
            uses[block.index] = found
        return uses

    def _route(self, state: RouterState, blocks: list[Block], index: int, keep: float,
               uses: list[SequenceValue]) -> dict:
        """Insert one router before block ``index`` (module docstring, steps 1–4)."""
        hidden, end = blocks[index].input, blocks[index].output
        previous = blocks[index - 1] if index else None
        region = nodes_between(hidden, end)
        original = state.inputs[index]
        uses = [dataclasses.replace(u, value=hidden) if u.value is original else u for u in uses]
        ops = RouterOps(state, f"router{index}")
        n = ops.dim(hidden, 1)
        positions = ops.positions(hidden, n)
        valid = ops.validity([u for u in uses if u.mask], n, hidden)
        features = ops.features(hidden, positions, n, previous, state.orders.get(index - 1))
        fitted, recalls = None, {}
        if self.router == "learned":
            fitted, recalls = self._fit(state, ops, hidden, end, keep, [blocks[index].softmax.outputs[0]])
        score = ops.score(self.router, features, fitted)
        k = ops.kept_count(keep, n, len(self.keep_tokens))
        order = ops.select(score, valid, ops.forced(positions, n, self.keep_tokens), k)
        for use in uses:
            replacement = ops.gather(use, order, k, hidden) if use.seq_axes else ops.patch(use, k)
            _rewire(use.value, replacement, region)
        merged = ops.scatter(hidden, end, order, region)
        _forget_length(region, hidden.shape, f"{ops.prefix}_tokens")
        if index + 1 < len(blocks):
            blocks[index + 1].input = merged
        state.orders[index] = order
        logger.info("router before block %d: keep %.2f", index, keep)
        return {
            "block": index,
            "keep": keep,
            "tokens_at_calibration_length": f"{_kept(keep, self._length, len(self.keep_tokens))}"
            f"/{self._length}",
            "gathered": [u.value.name for u in uses if u.seq_axes],
            "patched_shapes": [u.value.name for u in uses if not u.seq_axes],
            "padding_masks": [u.value.name for u in uses if u.mask],
            "held_out_recall": recalls,
        }

    def _fit(self, state: RouterState, ops: RouterOps, hidden: ir.Value, end: ir.Value, share: float,
             attention: list[ir.Value]):
        """Fit the learned router; every router kind's held-out top-k recall.

        The target of token i weighs equally what skipping it costs the token itself and what
        it costs the others: ½·z(log ‖yᵢ − hᵢ‖/‖hᵢ‖) + ½·z(log Σ attention token i receives in
        the routed blocks), z standardising within each row, h entering the routed blocks and
        y leaving them. The last quarter of the rows is held out for the recall.
        """
        names = [ops.features_value.name, ops.valid_float.name, hidden.name, end.name]
        received = [a.name for a in attention if a.shape is not None and len(a.shape) == 4]
        rows = {"features": [], "valid": [], "target": []}
        runner = exposing_runner(state.model, names + received, threads=self.threads)
        for out in (runner.run(feeds) for feeds in self.calibration):
            features, valid, x, y = (out[name] for name in names)
            valid = valid > 0.5
            change = np.linalg.norm(y - x, axis=-1) / (np.linalg.norm(x, axis=-1) + EPS)
            target = router_mlp.standardise_rows(np.log(change + EPS), valid)
            if received:
                influence = sum(out[name].sum(axis=(1, 2)) for name in received)
                target = (target + router_mlp.standardise_rows(np.log(influence + EPS), valid)) / 2
            rows["target"].extend(target)
            rows["features"].extend(features.astype(np.float64))
            rows["valid"].extend(valid)
        count = len(rows["target"])
        held = max(1, int(round(count * HELD_OUT))) if count > 1 else 0
        split = count - held
        train_f = np.concatenate([f[m] for f, m in zip(rows["features"][:split], rows["valid"][:split])])
        train_t = np.concatenate([t[m] for t, m in zip(rows["target"][:split], rows["valid"][:split])])
        fitted = router_mlp.fit(train_f, train_t, hidden=self.hidden)
        recalls = {}
        if held:
            features = _stack(rows["features"][split:])
            target, valid = _stack(rows["target"][split:]), _stack(rows["valid"][split:])
            scores = {"norm": features[..., 1]}
            if ops.has_attention:
                scores["attention"] = features[..., 2]
            scores["learned"] = fitted.score(features)
            recalls = {kind: round(router_mlp.recall(s, target, valid, share), 4) for kind, s in scores.items()}
        return fitted, recalls


def _refuse_kv_cache(model: ir.Model, name: str) -> None:
    """Routing drops tokens, and a KV-cache decoder must keep every token's keys and values for
    the steps after it (and a decode step has a single token to route)."""
    kv = find_kv_cache(model)
    if kv is not None:
        raise StructureError(
            f"{name}: the model is a decoder with a KV cache (past input {kv.pairs[0].past!r}); routing drops "
            "tokens, so later decode steps would miss their keys and values, and a decode step has one token "
            "to route. Route an encoder, or a prefill-only graph without a cache"
        )


def _check_closed(region: set[ir.Node], end: ir.Value) -> None:
    """Only ``end`` may leave the routed blocks."""
    for node in region:
        for out in node.outputs:
            if out is end:
                continue
            outside = [u.node for u in out.uses() if u.node not in region]
            if outside or out.is_graph_output():
                reader = f"{outside[0].op_type} node {outside[0].name!r}" if outside else "a graph output"
                raise StructureError(
                    f"value {out.name!r} computed inside the routed blocks is read by {reader} "
                    "outside them; tokens cannot be routed past it"
                )


def _forget_length(region: set[ir.Node], hidden_shape: ir.Shape | None, name: str) -> None:
    """Values inside the routed blocks hold k tokens, not n: rename n's symbolic dim to ``name``.

    Runtimes trust equal symbolic dims to be equal sizes (ONNX Runtime reuses buffers on it);
    with a static or unknown n the shapes are dropped and left to the runtime's inference.
    """
    length = hidden_shape[1] if hidden_shape is not None and len(hidden_shape) > 1 else None
    symbol = length.value if isinstance(length, ir.SymbolicDim) else None
    for node in region:
        for value in node.outputs:
            if value.shape is None:
                continue
            if symbol is None:
                value.shape = None
                continue
            dims = [_renamed(d, symbol, name) for d in value.shape]
            value.shape = ir.Shape(dims)


def _renamed(dim, symbol: str, name: str):
    if not isinstance(dim, ir.SymbolicDim) or dim.value is None:
        return dim
    if dim.value == symbol:
        return ir.SymbolicDim(name)
    return None if symbol in dim.value else dim


def _entering(graph: ir.Graph, region: set[ir.Node]) -> list[ir.Value]:
    """Non-constant values read by ``region`` and computed outside it, in graph order."""
    seen: dict[ir.Value, None] = {}
    for node in graph:
        if node not in region:
            continue
        for value in node.inputs:
            if value is None or value in seen or value.producer() in region:
                continue
            if value.const_value is not None or _is_constant_node(value.producer()):
                continue
            seen[value] = None
    return list(seen)


def _is_constant_node(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "Constant" and node.domain == ""


def _rewire(value: ir.Value, replacement: ir.Value, region: set[ir.Node]) -> None:
    for use in list(value.uses()):
        if use.node in region:
            use.node.replace_input_with(use.idx, replacement)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of different lengths padded to the longest (padding is never valid)."""
    width = max(r.shape[0] for r in rows)
    out = np.zeros((len(rows), width) + rows[0].shape[1:], rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def _kept(keep: float, length: int, forced: int) -> int:
    return min(length, max(1, forced, math.ceil(Fraction(keep).limit_denominator(10_000) * length)))


# -- option validation ------------------------------------------------------------------


def _keep(owner, value):
    if isinstance(value, (list, tuple)):
        if not value:
            raise RecipeError(f"{owner.name}: option 'keep' is an empty list")
        return tuple(number(owner, "keep", v, low=0.0, high=1.0, open_low=True) for v in value)
    return number(owner, "keep", value, low=0.0, high=1.0, open_low=True)


def _start(owner, value):
    if value is None:
        return None
    if isinstance(value, float) and not isinstance(value, bool):
        if not 0.0 <= value < 1.0:
            raise RecipeError(f"{owner.name}: option 'start_block' as a fraction of depth must be in [0, 1), got {value}")
        return value
    return integer(owner, "start_block", value, low=0)


def _positions(owner, value) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RecipeError(f"{owner.name}: option 'keep_tokens' must be a list of token positions, got {value!r}")
    return tuple(value)
