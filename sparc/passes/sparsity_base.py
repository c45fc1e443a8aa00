"""What the N:M, block and unstructured sparsity passes share: layer selection and methods.

Cases:
1. Layers: every linear layer (``sparc.analysis.linear``) whose name matches ``targets``
   (default: all) and no ``skip`` pattern; a layer whose output is a graph output (a
   classifier or LM head) is left dense unless ``include_outputs``.
2. ``method="magnitude"``: keep the largest |W|.
   ``method="wanda"``: keep the largest |W|·‖X_in‖₂ (per input feature, from calibration),
   compared within each output row for unstructured sparsity (as in the paper).
   ``method="sparsegpt"``: OBS reconstruction with H = XᵀX (``sparc.algorithms.sparsegpt``); the damping
   it needed is reported. ``precision="float32"`` factors and prunes in float32 (half the
   memory, about half the time; the statistics are still summed in float64).
3. The mask is applied to the weight, and the node records the pattern in its
   ``sparc.algorithms.sparsity`` annotation. Selected layers that share one weight (an unrolled
   RNN's steps, tied projections) get one mask, from the statistics of all their inputs (the
   first layer's pattern); a weight also read by an unselected node is copied once for them.
4. Calibration (wanda, sparsegpt) is sequential by default: the layers are taken block by block
   (``analysis.blocks.find_segments``: transformer blocks, or a CNN's stages; layers outside
   every block in graph order around them), and a block's input statistics are collected on
   the model whose earlier blocks are already sparsified, exposing only that block's layer
   inputs. A model without blocks is calibrated in one pass, and the report says why.
   ``sequential=False``: one calibration run over the original model for every layer.
5. Density passes (block, unstructured): ``density`` is one number or a mapping of layer-name
   patterns to densities (first match wins; unmatched selected layers use ``default_density``).
   ``owl=λ > 0`` with one number: per-layer densities in d ± λ from each layer's outlier ratio
   (``sparc.algorithms.owl``; input norms from one calibration run over the original model),
   keeping the parameter-weighted mean density d.
6. On an engine of several workers (``sparc.compile(..., ray=...)``) SparseGPT's solves run on
   the workers: one job per set of layers reading the same inputs (factor H once, prune each
   of their weights), the jobs of one block at a time when sequential, and of every block at
   once with ``sequential=False`` (blocks are then independent given the original model's
   inputs). Workers run their BLAS on one thread, so values may differ in float32 rounding.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from sparc.algorithms import owl, sparsegpt
from sparc.algorithms.sparsity import Pattern, annotate, select_mask
from sparc.analysis.blocks import find_segments
from sparc.analysis.linear import LinearLayer, find_linear_layers, skipped_layers_note
from sparc.analysis.stages import split_into_stages
from sparc.distributed import InProcess
from sparc.errors import CalibrationError, RecipeError, StructureError
from sparc.measure.execute import collect
from sparc.measure.reducers import ChannelStats, Gram, token_mask
from sparc.measure.staged import StagedRun
from sparc.passes import edit
from sparc.passes.base import SparcPass, choice, integer, number, patterns

METHODS = ("magnitude", "wanda", "sparsegpt")


class SparsityPass(SparcPass):
    """Base of the fine-grained sparsity passes; subclasses define ``pattern_for``."""

    lossless = False

    def __init__(
        self,
        *,
        method: str = "magnitude",
        targets=None,
        skip=None,
        include_outputs: bool = False,
        damping: float = 0.01,
        blocksize: int = 128,
        sequential: bool = True,
        precision: str = "float64",
        **common,
    ):
        super().__init__(**common)
        self.method = choice(self, "method", method, set(METHODS))
        self.targets = patterns(self, "targets", targets)
        self.skip = patterns(self, "skip", skip)
        self.include_outputs = bool(include_outputs)
        self.damping = number(self, "damping", damping, low=0.0)
        self.blocksize = integer(self, "blocksize", blocksize, low=1)
        self.sequential = bool(sequential)
        self.precision = choice(self, "precision", precision, {"float64", "float32"})

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.method != "magnitude"

    def pattern_for(self, layer: LinearLayer) -> Pattern:
        raise NotImplementedError

    def selected(self, layers: list[LinearLayer]) -> list[LinearLayer]:
        """Layers the pass sparsifies (case 1 of the module docstring)."""
        chosen = []
        for layer in layers:
            if self.targets and not any(fnmatch.fnmatch(layer.name, p) for p in self.targets):
                continue
            if any(fnmatch.fnmatch(layer.name, p) for p in self.skip):
                continue
            if layer.output.is_graph_output() and not self.include_outputs:
                continue
            chosen.append(layer)
        return chosen

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = self.selected(find_linear_layers(model.graph))
        if not layers:
            self.details["layers"] = 0
            self.details["skipped"] = skipped_layers_note(model.graph) or (
                "no linear layer (MatMul/Gemm with a constant weight) is selected: "
                f"{len(find_linear_layers(model.graph))} in the graph, targets {self.targets or 'all'}, "
                f"skip {self.skip or 'none'}, layers writing graph outputs "
                f"{'included' if self.include_outputs else 'left dense'}")
            return ir.passes.PassResult(model, modified=False)
        self.prepare(model, layers)
        units = sharing_units(layers)
        groups, run, calibration = self._calibration_groups(model, units)
        kept = total = 0
        raised = {}
        for stage, group in groups:
            _check_finite_weights([layer for unit in group for layer in unit])
            reducers = self._input_statistics(model, [layer for unit in group for layer in unit], run, stage)
            solved = self._solve(group, reducers)
            del reducers
            for unit, (weight, damping) in zip(group, solved):  # the group's masks computed: now mutate
                edit.set_shared_weight(model.graph, unit, weight.T)
                for layer in unit:
                    annotate(layer.node, self.pattern_for(unit[0]))
                kept += int(np.count_nonzero(weight))
                total += weight.size
                if damping is not None and damping > self.damping:
                    raised[unit[0].name] = damping
        if run is not None:
            run.close()
        self.details.update({"layers": len(layers), "density": round(kept / max(total, 1), 4),
                             "pattern": self.pattern_for(layers[0]).describe(), "method": self.method})
        shared = [unit for unit in units if len(unit) > 1]
        if shared:
            self.details["shared"] = (f"{sum(map(len, shared))} layers share {len(shared)} weights: one mask per "
                                      "weight, from the statistics of all its layers' inputs")
        if self.method != "magnitude":
            self.details["calibration"] = calibration
        if self.method == "sparsegpt":
            self.details["damping_raised"] = raised or "none"
            if self.engine.workers > 1:
                self.details["solves"] = f"factor and prune on {self.engine.workers} workers"
        return ir.passes.PassResult(model, modified=True)

    def prepare(self, model: ir.Model, layers: list[LinearLayer]) -> None:
        """Work on the selected layers before any is sparsified (none here)."""

    def _calibration_groups(self, model, units) -> tuple[list[tuple[int | None, list]], StagedRun | None, str]:
        """(stage, units) in the order they are calibrated and sparsified, the staged run that
        calibrates them block by block (None: one run of the whole model), and how (case 4 of
        the module docstring). A unit of layers sharing one weight goes with its first layer."""
        if self.method == "magnitude" or not self.sequential:
            return [(None, units)], None, "one pass"
        try:
            stages = split_into_stages(model, find_segments(model))
        except StructureError as exc:
            return [(None, units)], None, f"one pass (no blocks: {exc})"
        stage_of = {node: stage.index for stage in stages for node in stage.nodes}
        spanning = [unit[0].name for unit in units if len({stage_of[layer.node] for layer in unit}) > 1]
        if spanning:
            return [(None, units)], None, f"one pass (layers sharing one weight lie in different blocks: {spanning[:3]})"
        groups: dict[int, list[list[LinearLayer]]] = defaultdict(list)
        for unit in units:
            groups[stage_of[unit[0].node]].append(unit)
        run = StagedRun(model, [stage.nodes for stage in stages], self.calibration, threads=self.threads,
                        engine=self.engine)
        return sorted(groups.items()), run, f"sequential, block by block: {len(groups)} groups"

    def _input_statistics(self, model, layers, run: StagedRun | None, stage: int | None) -> dict:
        """Reducers of the layers' inputs: from the staged run at ``stage`` (the stages before
        it run first, on the weights as the pass left them), else from one run of the model."""
        if self.method == "magnitude":
            return {}
        mask = token_mask(model)
        reducers = {}
        for layer in layers:
            if layer.input.name not in reducers:
                reducers[layer.input.name] = Gram(mask) if self.method == "sparsegpt" else ChannelStats(mask)
        if run is None:
            collect(model, reducers, self.calibration, threads=self.threads, description=self.name)
        else:
            while run.next < stage:
                run.advance(description=self.name)
            run.expose(stage, reducers, description=self.name)
        for name, reducer in reducers.items():
            statistic = reducer.matrix if self.method == "sparsegpt" else reducer.sq_sum
            if statistic is None or not np.isfinite(statistic).all():
                raise CalibrationError(f"the calibration statistics of {name!r} hold NaN or Inf")
        return reducers

    def _solve(self, group: list[list[LinearLayer]], reducers: dict) -> list[tuple[np.ndarray, float | None]]:
        """The new W[out, in] (float32, as stored) of every unit of ``group`` and the damping its
        SparseGPT needed. Units whose layers read the same inputs share one statistic (one
        SparseGPT factorization) and make one job; SparseGPT's jobs (factor and prune, the
        costly part) run on the engine's workers, the others here."""
        by_inputs: dict[tuple, list[int]] = {}
        for index, unit in enumerate(group):
            by_inputs.setdefault(tuple(dict.fromkeys(layer.input.name for layer in unit)), []).append(index)
        jobs = [_Job(self.method, [_statistic_of(reducers.get(name), self.method) for name in names],
                     [(group[i][0].weight_kn(), self.pattern_for(group[i][0])) for i in members],
                     self.damping, self.precision, self.blocksize)
                for names, members in by_inputs.items()]
        engine = self.engine if self.method == "sparsegpt" else InProcess()
        solved: list = [None] * len(group)
        for members, results in zip(by_inputs.values(), engine.map(_run_job, jobs)):
            for index, result in zip(members, results):
                solved[index] = result
        return solved


def _statistic_of(reducer, method: str) -> tuple[np.ndarray | None, int]:
    """What a job needs of one input's reducer: (XᵀX, rows) for sparsegpt, (Σx², rows) for wanda."""
    if method == "magnitude":
        return None, 0
    return (reducer.matrix if method == "sparsegpt" else reducer.sq_sum), reducer.rows


@dataclasses.dataclass
class _Job:
    """The units of one group that read the same inputs: their statistics (one per input) and
    their (W[in, out], pattern) pairs, with the method's options."""

    method: str
    statistics: list[tuple[np.ndarray | None, int]]
    weights: list[tuple[np.ndarray, Pattern]]
    damping: float
    precision: str
    blocksize: int


def _run_job(job: _Job) -> list[tuple[np.ndarray, float | None]]:
    """(new W[out, in] in float32, SparseGPT's damping or None) per weight of ``job``."""
    statistic = _shared_statistic(job)
    results = []
    for weight_kn, pattern in job.weights:
        weight = _sparsify(job, weight_kn.T, pattern, statistic).astype(np.float32)
        results.append((weight, statistic.damping if job.method == "sparsegpt" else None))
    return results


def _shared_statistic(job: _Job):
    """What the method needs for weights whose layers read the job's inputs: wanda the input
    norms ‖X_j‖₂ = √(Σ_l Σ x²), sparsegpt the factor of H = Σ_l X_lᵀX_l / Σ_l rows."""
    if job.method == "magnitude":
        return None
    if job.method == "wanda":
        return np.sqrt(sum(sq_sum for sq_sum, _ in job.statistics))
    rows = max(sum(count for _, count in job.statistics), 1)
    hessian = job.statistics[0][0] / rows
    for matrix, _ in job.statistics[1:]:
        hessian += matrix / rows
    return sparsegpt.factor(hessian.astype(job.precision, copy=False), job.damping, overwrite=True,
                            precision=job.precision)


def _sparsify(job: _Job, weight_oi: np.ndarray, pattern: Pattern, statistic) -> np.ndarray:
    """The new W[out, in] of one weight, from the job's shared statistic."""
    weight = weight_oi.astype(job.precision if job.method == "sparsegpt" else np.float64)
    if job.method == "sparsegpt":
        return sparsegpt.prune(weight, statistic, pattern, blocksize=job.blocksize)
    scores = np.abs(weight)
    if job.method == "wanda":
        scores = scores * statistic[None, :]
    mask = select_mask(scores, pattern, per_row=job.method == "wanda")
    return np.where(mask, weight, 0.0)


def sharing_units(layers: list[LinearLayer]) -> list[list[LinearLayer]]:
    """The layers grouped by the weight they read (the same stored tensor, in the same
    orientation), in order of each unit's first layer."""
    units: dict[tuple, list[LinearLayer]] = {}
    for layer in layers:
        units.setdefault((id(layer.weight), layer.transposed), []).append(layer)
    return list(units.values())


def _check_finite_weights(layers: list[LinearLayer]) -> None:
    """Masks of weights holding NaN or Inf mean nothing: refuse, naming the layers."""
    broken = [layer.name for layer in layers if not np.isfinite(layer.weight_kn()).all()]
    if broken:
        raise StructureError(f"weights hold NaN or Inf in layer(s) {', '.join(broken[:5])}")


class DensitySparsityPass(SparsityPass):
    """A sparsity pass whose layers keep a density: one number, per-layer patterns, or OWL (case 5)."""

    def __init__(self, *, density=0.5, default_density: float = 1.0, owl: float = 0.0,
                 owl_threshold: float = 5.0, **options):
        super().__init__(**options)
        self.default_density = number(self, "default_density", default_density, low=0.0, high=1.0, open_low=True)
        if isinstance(density, dict):
            self.density = {str(k): number(self, f"density[{k}]", v, low=0.0, high=1.0, open_low=True)
                            for k, v in density.items()}
        else:
            self.density = number(self, "density", density, low=0.0, high=1.0, open_low=True)
        self.owl = number(self, "owl", owl, low=0.0, high=0.5)
        self.owl_threshold = number(self, "owl_threshold", owl_threshold, low=0.0, open_low=True)
        if self.owl > 0 and isinstance(self.density, dict):
            raise RecipeError(f"{self.name}: option 'owl' allocates around one density; give 'density' as a number")
        self.allocated: dict[str, float] = {}

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.method != "magnitude" or self.owl > 0

    def density_for(self, layer: LinearLayer) -> float:
        """The OWL density of ``layer``, else the first matching pattern's, else the default."""
        if layer.name in self.allocated:
            return self.allocated[layer.name]
        if not isinstance(self.density, dict):
            return self.density
        for pattern, value in self.density.items():
            if fnmatch.fnmatch(layer.name, pattern):
                return value
        return self.default_density

    def prepare(self, model: ir.Model, layers: list[LinearLayer]) -> None:
        if self.owl <= 0:
            return
        mask = token_mask(model)
        norms = {layer.input.name: ChannelStats(mask) for layer in layers}
        collect(model, norms, self.calibration, threads=self.threads, description=f"{self.name} (OWL)")
        weights = [layer.weight_kn() for layer in layers]
        ratios = [owl.outlier_ratio(w, np.sqrt(norms[layer.input.name].sq_sum), self.owl_threshold)
                  for layer, w in zip(layers, weights)]
        values = owl.allocate(ratios, [w.size for w in weights], self.density, self.owl)
        self.allocated = {layer.name: round(v, 4) for layer, v in zip(layers, values)}
        self.details["allocation"] = (f"OWL λ={self.owl:g}, M={self.owl_threshold:g}: densities "
                                      f"{min(values):.3f}–{max(values):.3f}")
