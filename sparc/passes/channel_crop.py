"""ChannelCrop: structured channel pruning over coupled-channel groups of the ONNX graph.

Groups come from ``sparc.analysis.channels`` (Conv incl. depthwise, ConvTranspose,
BatchNorm, linear layers, broadcasting element-wise ops, Concat/Split/Slice, pooling and
reductions, Flatten/Reshape/Transpose, squeeze-and-excitation Muls, FFN units and attention
heads). Blocked groups are left alone and reported with the reason. For each prunable group:
1. Every unit (a set of channels removed together: one channel, or one attention head) gets
   an importance: ``l1``/``l2`` norm of the producing weights' slices, ``bn_scale`` = Σ|γ|
   of the BatchNorms in the group, or ``activation`` = Σ over consuming layers of
   ‖xᵢ‖₂·‖W[:, i]‖₂ from calibration data (xᵢ the channel's values, W the consumer's weight).
2. ``ratio`` of the units go: uniformly per group (a float, or a dict of name patterns to
   ratios), or by ``global_ranking`` of scores normalized by each group's mean. Kept counts
   are at least ``min_channels`` and multiples of ``round_to`` channels.
3. Every member of the group is cut consistently (:mod:`sparc.passes.channel_edit`: weights,
   biases, BatchNorm statistics, per-channel constants, Reshape shapes, Split sizes, Slice bounds, depthwise ``group``),
   after all new tensors have been computed and checked. With ``bias_compensation``, each
   consumer's bias absorbs the removed channels' mean contribution, mean(xᵢ)·ΣW[:, i].
   With ``reconstruct``, consumers that are linear layers or 1×1 convolutions are refitted
   by least squares on calibration statistics: with f = [x_K, 1] (kept inputs and a constant),
   [W'; Δb] = E[f fᵀ]⁻¹·E[f xᵀ]·W, so they best reproduce their original outputs; only
   where calibration gives at least 4 rows per unknown (else the fit follows noise). Each
   refinement asked for is tried on a copy and kept only if it lowers the model's output
   error on calibration batches (the report lists each round's errors and choice). Both are
   on by default whenever calibration data is given (None); False turns one off.
4. With calibration (activation importance or a refinement), groups are planned block by
   block (``analysis.blocks.find_segments``): the groups produced in block l get their
   statistics from the model whose earlier blocks are already cropped and refined; groups
   produced outside every block come last. ``sequential=False``, ``global_ranking`` (which
   compares all groups at once) or a model without blocks: one round over every group.
"""

from __future__ import annotations

import fnmatch
import logging
import math

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparc.analysis.blocks import find_segments, nodes_between
from sparc.analysis.channels import ChannelGroup, Space, find_channel_groups
from sparc.analysis.linear import skipped_layers_note
from sparc.data import CalibrationData, synthetic_feeds
from sparc.errors import RecipeError, StructureError
from sparc.ir_utils import constant_array, copy_model
from sparc.measure.cost import observed_shapes
from sparc.measure.execute import collect, run_batches
from sparc.measure.outputs import OutputError
from sparc.measure.reducers import ChannelStats, Gram
from sparc.passes.base import SparcPass, choice, integer, number, patterns, register
from sparc.passes.channel_edit import ConsumerStats, apply_plan, refittable

logger = logging.getLogger(__name__)

IMPORTANCE = ("l1", "l2", "bn_scale", "activation")
REFINEMENTS = {"none": (False, False), "bias": (True, False), "reconstruct": (False, True)}
REFINEMENT_BATCHES = 4


@register
class ChannelCrop(SparcPass):
    """Remove whole channels (and heads) from every member of their coupled group."""

    lossless = False

    def __init__(
        self,
        *,
        ratio=0.3,
        importance: str = "l2",
        global_ranking: bool = False,
        round_to: int = 8,
        min_channels: int = 8,
        skip=None,
        bias_compensation: bool | None = None,
        reconstruct: bool | None = None,
        sequential: bool = True,
        **common,
    ):
        super().__init__(**common)
        self.ratio = _ratio(self, ratio)
        self.importance = choice(self, "importance", importance, set(IMPORTANCE))
        self.global_ranking = bool(global_ranking)
        self.round_to = integer(self, "round_to", round_to, low=1)
        self.min_channels = integer(self, "min_channels", min_channels, low=1)
        self.skip = patterns(self, "skip", skip)
        self.bias_compensation = None if bias_compensation is None else bool(bias_compensation)
        self.reconstruct = None if reconstruct is None else bool(reconstruct)
        self.sequential = bool(sequential)
        if self.global_ranking and isinstance(self.ratio, dict):
            raise RecipeError(f"{self.name}: global_ranking takes one ratio, not per-layer ratios")

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.importance == "activation" or bool(self.bias_compensation) or bool(self.reconstruct)

    @property
    def refinements(self) -> list[str]:
        """The refinements to try: those asked for; by default (None) both when calibration is given."""
        given = self.calibration is not None
        return [name for name, option in (("bias", self.bias_compensation), ("reconstruct", self.reconstruct))
                if option or (option is None and given)]

    @property
    def uses_calibration(self) -> bool:
        return self.importance == "activation" or bool(self.refinements)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rounds = self._rounds(model)
        self.details["pruned"] = []
        self._considered: set[str] = set()
        modified = False
        for index, nodes in enumerate(rounds):
            modified |= self._crop(model, nodes, first=index == 0)
        if not self.details["pruned"]:
            del self.details["pruned"]
        if not modified and "skipped" not in self.details:
            self.details["skipped"] = self._why_nothing()
        return ir.passes.PassResult(model, modified=modified)

    def _why_nothing(self) -> str:
        """The reason a crop removed nothing, from the groups found in the first round."""
        groups, blocked = self.details.get("groups", 0), len(self.details.get("blocked", []))
        if not groups:
            return "no channel group found (no layer whose output channels could be cut)"
        if not self._considered:
            return (f"none of the {groups} channel groups can be cut: {blocked} blocked (see 'blocked'), "
                    f"the others have a single unit or are not selected")
        return f"the ratio and rounding keep every unit of the groups of the {len(self._considered)} layers considered"

    def _rounds(self, model: ir.Model) -> list[dict[ir.Node, int] | None]:
        """Block by block (step 4 of the module docstring), or one round over every group."""
        if not self.uses_calibration:
            return [None]
        reason = "sequential=False" if not self.sequential else None
        if self.sequential and self.global_ranking:
            reason = "global_ranking compares every group's scores at once"
        if reason is None:
            try:
                segments = find_segments(model)
            except StructureError as exc:
                reason = f"no blocks: {exc}"
        if reason is not None:
            self.details["calibration"] = f"one pass ({reason})"
            return [None]
        self.details["calibration"] = f"sequential, {len(segments)} blocks"
        return [{node: 0 for node in nodes_between(s.input, s.output)} for s in segments] + [None]

    def _crop(self, model: ir.Model, nodes: dict[ir.Node, int] | None, *, first: bool) -> bool:
        """One round: the groups with a producing layer in ``nodes`` (None: all groups left)."""
        feeds = probe_feeds(model, self.calibration)
        shapes = observed_shapes(model, list(model.graph), feeds)
        groups = find_channel_groups(model, shapes)
        if first:
            self.details["groups"] = len(groups)
            self.details["blocked"] = [_describe_blocked(g) for g in groups if g.blocked]
            if note := skipped_layers_note(model.graph):
                self.details["skipped"] = note
        candidates = [g for g in groups if g.prunable and not self._skipped(g) and self._in_round(g, nodes)
                      and (self.global_ranking or self._group_ratio(g) > 0)]  # unselected groups: not scored
        self._considered.update(name for g in candidates for name in g.producers)
        if not candidates:
            return False
        stats = self._consumer_stats(model, candidates) if self.uses_calibration else {}
        plan = self._plan(candidates, stats)
        if not plan:
            return False
        removed = {group.index: units for group, units in plan}
        refinement = self._choose_refinement(model, shapes, removed, stats)
        apply_plan(model.graph, plan, stats, *REFINEMENTS[refinement])
        RemoveUnusedNodesPass()(model)
        self.details["pruned"] += [
            f"{g.producers[0] if g.producers else g.index}: {len(g.units)} -> {len(g.units) - len(r)}"
            for g, r in plan
        ]
        return True

    def _in_round(self, group: ChannelGroup, nodes: dict[ir.Node, int] | None) -> bool:
        """Whether ``group`` is planned in this round: not planned in an earlier one (known by
        its producing layers' names, which cuts keep) and, in a block's round, produced in it;
        the last round (None) takes every group left."""
        if any(name in self._considered for name in group.producers):
            return False
        return nodes is None or any(m.role == "producer" and m.node in nodes for m in group.members)

    def _choose_refinement(self, model, shapes, removed, stats) -> str:
        """Of the refinements asked for, the one with the lowest calibration output error.

        Compensation and refits are exact in expectation for one layer; through a deep
        network they can still make things worse, so each is tried on a copy and kept only
        where it reduces the error of the model's outputs.
        """
        asked = ["none", *self.refinements]
        if len(asked) == 1:
            return "none"
        data = CalibrationData(self.calibration.batches[:REFINEMENT_BATCHES])
        reference = run_batches(model, data, threads=self.threads)
        names = [v.name for v in model.graph.outputs]
        errors = {}
        for name in asked:
            trial = copy_model(model)
            groups = find_channel_groups(trial, shapes)
            plan = [(groups[index], units) for index, units in removed.items()]
            apply_plan(trial.graph, plan, stats, *REFINEMENTS[name])
            outputs = run_batches(trial, data, threads=self.threads)
            errors[name] = OutputError.between(outputs, reference, names).mean_rel
        best = min(asked, key=lambda name: errors[name])
        self.details.setdefault("refinement", []).append({"chosen": best, **{k: round(v, 4) for k, v in errors.items()}})
        return best

    # -- planning ---------------------------------------------------------------------------


    def _skipped(self, group: ChannelGroup) -> bool:
        return any(fnmatch.fnmatch(name, p) for name in group.producers for p in self.skip)

    def _group_ratio(self, group: ChannelGroup) -> float:
        if not isinstance(self.ratio, dict):
            return self.ratio
        for pattern, ratio in self.ratio.items():
            if any(fnmatch.fnmatch(name, pattern) for name in group.producers):
                return ratio
        return 0.0

    def _plan(self, groups: list[ChannelGroup], stats) -> list[tuple[ChannelGroup, list[int]]]:
        """(group, units to remove) for every group that loses units."""
        scores = {g.index: self._scores(g, stats) for g in groups}
        if self.global_ranking:
            return self._global_plan(groups, scores)
        plan = []
        for group in groups:
            keep = self._kept_units(group, round((1.0 - self._group_ratio(group)) * len(group.units)))
            order = np.argsort(scores[group.index], kind="stable")
            removed = sorted(order[: len(group.units) - keep].tolist())
            if removed:
                plan.append((group, removed))
        return plan

    def _global_plan(self, groups, scores) -> list[tuple[ChannelGroup, list[int]]]:
        """Rank every unit of every group by score / group mean; remove the lowest ``ratio``."""
        ranked = sorted(
            (score / max(float(np.mean(scores[g.index])), 1e-12), g.index)
            for g in groups
            for score in scores[g.index]
        )
        budget = int(round(self.ratio * len(ranked)))
        losing = {g.index: 0 for g in groups}
        for _, group_index in ranked[:budget]:
            losing[group_index] += 1
        plan = []
        for group in groups:
            keep = self._kept_units(group, len(group.units) - losing[group.index])
            order = np.argsort(scores[group.index], kind="stable")
            removed = sorted(order[: len(group.units) - keep].tolist())
            if removed:
                plan.append((group, removed))
        return plan

    def _kept_units(self, group: ChannelGroup, wanted: int) -> int:
        """``wanted`` rounded so kept channels are ≥ min_channels and multiples of round_to."""
        width = _unit_width(group)
        step = self.round_to // math.gcd(self.round_to, width)
        minimum = math.ceil(self.min_channels / width)
        kept = max(minimum, int(round(wanted / step)) * step, step)
        return min(len(group.units), kept)

    def _scores(self, group: ChannelGroup, stats) -> np.ndarray:
        """Importance of every unit of ``group`` (module docstring, step 1)."""
        per_channel: list[tuple[Space, np.ndarray]] = []
        for member in group.members:
            array = constant_array(member.node.inputs[member.index]) if member.kind == "slice" else None
            if array is None:
                continue
            if self.importance in ("l1", "l2") and member.role == "producer":
                per_channel.append((member.space, _norms(array, member.axis, self.importance)))
            elif self.importance == "bn_scale" and member.node.op_type == "BatchNormalization" and member.index == 1:
                per_channel.append((member.space, np.abs(array.astype(np.float64))))
            elif self.importance == "activation" and member.role == "consumer":
                signal = stats[member.space.value.name].l2
                per_channel.append((member.space, signal * _norms(array, member.axis, "l2")))
        if not per_channel:
            raise RecipeError(
                f"{self.name}: importance={self.importance!r} finds nothing to score in the group "
                f"of {group.producers[:2]} (no BatchNorm? use l2)"
            )
        scores = np.zeros(len(group.units))
        for u, unit in enumerate(group.units):
            for space, values in per_channel:
                if space in unit:
                    scores[u] += float(values[unit[space]].sum())
        return scores

    def _consumer_stats(self, model: ir.Model, groups: list[ChannelGroup]) -> dict[str, ConsumerStats]:
        """Channel statistics of every value a consumer reads, and with ``reconstruct`` its
        XᵀX where any of its consumers is refittable (whatever the members' order)."""
        stats: dict[str, ConsumerStats] = {}
        consumers = [m for g in groups for m in g.members if m.role == "consumer"]
        for member in consumers:
            name, axis = member.space.value.name, member.space.axis
            stats.setdefault(name, ConsumerStats(ChannelStats(axis=axis)))
            if "reconstruct" in self.refinements and refittable(member) and stats[name].gram is None:
                stats[name].gram = Gram(axis=axis)
        reducers = {name: [s.channels] + ([s.gram] if s.gram else []) for name, s in stats.items()}
        collect(model, reducers, self.calibration, threads=self.threads, description=self.name, engine=self.engine)
        return stats


def probe_feeds(model: ir.Model, calibration: CalibrationData | None) -> dict[str, np.ndarray]:
    """Inputs to read channel groups' shapes from: one sample (batch 1, so batch and head axes
    never merge) of the first calibration batch, or made-up inputs without calibration.

    Each input is cut on its own batch axis (:func:`_batch_axes`); scalars, inputs whose batch
    size the model fixes (ONNX Runtime rejects any other size) and inputs without the batch
    dimension stay whole.
    """
    if not (calibration is not None and len(calibration)):
        return synthetic_feeds(model, batch=1, seq=16)
    axes = _batch_axes(model)
    return {k: v if axes.get(k, 0) is None or np.ndim(v) == 0 else np.take(v, [0], axis=axes.get(k, 0))
            for k, v in calibration.batches[0].items()}


def _batch_axes(model: ir.Model) -> dict[str, int | None]:
    """Each graph input's batch axis: where the batch dimension (the first dynamic leading
    dimension among the inputs) appears, else 0 for a dynamic leading dimension, else None
    (a scalar, or a fixed size: the model was captured without a dynamic batch)."""
    shapes = {value.name: value.shape for value in model.graph.inputs}
    batch = next((str(s[0]) for s in shapes.values() if s is not None and len(s) and not isinstance(s[0], int)), None)
    axes: dict[str, int | None] = {}
    for name, shape in shapes.items():
        dims = [str(d) for d in shape] if shape is not None else None
        if dims is None:
            axes[name] = 0
        elif batch is not None and batch in dims:
            axes[name] = dims.index(batch)
        elif len(dims) and not isinstance(shape[0], int):
            axes[name] = 0
        else:
            axes[name] = None
    return axes


def _ratio(owner, ratio):
    if isinstance(ratio, dict):
        return {str(k): number(owner, f"ratio[{k}]", v, low=0.0, high=0.95) for k, v in ratio.items()}
    return number(owner, "ratio", ratio, low=0.0, high=0.95)


def _unit_width(group: ChannelGroup) -> int:
    """Channels per unit in the group's producing layers (1, or a head's width)."""
    sizes = [len(indices) for unit in group.units[:1] for indices in unit.values()]
    return max(1, min(sizes)) if sizes else 1


def _norms(array: np.ndarray, axis: int, kind: str) -> np.ndarray:
    moved = np.moveaxis(array.astype(np.float64), axis, 0).reshape(array.shape[axis], -1)
    return np.abs(moved).sum(1) if kind == "l1" else np.sqrt(np.square(moved).sum(1))


def _describe_blocked(group: ChannelGroup) -> str:
    owner = ", ".join(group.producers[:2]) or f"group {group.index}"
    return f"{owner}: {group.blocked[0]}"
