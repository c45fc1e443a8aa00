"""``sparc.tune``: the fastest compiled model whose quality loss stays within a budget.

1. **Space**, read from the graph: the channel groups ChannelCrop can shrink (kind ``units``:
   FFN units, conv channels; kind ``heads``: attention heads), stream slicing where the model
   is a pre-norm transformer, 16×1 blocks (SparseGPT) on the TVM backend, and Reconstruct
   where torch is installed and the model has blocks, and token routing (a learned router
   keeping a fraction of the tokens from a late block on) where the model has attention
   blocks. ``passes`` restricts these families.
2. **The cheap model**, measured once: each group alone loses half its units (activation
   importance, no refinement); its loss on the held-out batches is its sensitivity s_g. The
   time t_g of the nodes reading or writing the group's channels comes from ONNX Runtime's
   profiler (``sparc.measure.profile``, the original model on the first held-out batch).
3. **Candidates**: an Optuna sampler (multi-objective TPE, speedup up and loss down, with the
   constraint loss ≤ max_loss) proposes a ratio r_k per kind, an allocation strength
   α ∈ [0, 1], the stream ratio, the block density and its per-layer OWL spread λ (layers
   with more outlier weights keep more blocks), whether to reconstruct, and the routed
   fraction and first routed block. Per group the
   ratio is r_g = clip(r_k·(1 − α·z_g), 0, 0.9), z_g = log(s_g/t_g) minus its kind's mean,
   divided by the largest |z| of the kind: at α = 1 the group that costs least loss per
   millisecond it holds loses up to 2·r_k units and the costliest none (OWL-style, from
   measured error and measured time). Under the cheap model's loss s_g·(r_g/0.5)² the loss
   for a saved time Σ r_g·t_g is least at r_g ∝ t_g/s_g, which this ranking follows.
4. **Measured, not predicted**: every candidate is compiled (:func:`evaluate`), its loss taken
   on held-out calibration batches and its speed timed side by side with the original on the
   backend. Optuna's study holds the trials (ask, evaluate, tell): in this process one
   candidate at a time; on Ray (``ray=``) as many at once as the cluster has CPUs, each
   evaluation a task (the group sensitivities of step 2 too). The answer is the fastest candidate within the budget, compiled again from its
   recipe and measured again at least ``MIN_SPEEDUP`` (1.03×, above timing noise) faster than
   the original; else the original model.

Loss (``metric``), worst over outputs: ``cosine`` 1 − mean row cosine, ``kl`` mean KL in nats,
``top1`` 1 − top-1 agreement, ``error`` mean relative error; by default cosine for outputs
measured by cosine and KL for logits and probabilities. Integer outputs must match exactly.
A callable ``metric(run) -> score`` (higher is better; ``run(feeds) -> {output: array}``)
makes the loss the score's drop from the original's.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import yaml

from sparc import backends
from sparc.analysis.blocks import find_blocks, find_segments
from sparc.analysis.channels import ChannelGroup, find_channel_groups
from sparc.analysis.transformer import find_transformer
from sparc.capture import capture
from sparc.compiler import CompiledModel, compile
from sparc.data import CalibrationData, as_calibration, holdout_size
from sparc.distributed import Engine, InProcess, Task, session
from sparc.errors import SparcError, StructureError, TuneError
from sparc.files import write_atomic
from sparc.ir_utils import PROTOBUF_LIMIT, weight_bytes
from sparc.measure.cost import observed_shapes
from sparc.measure.outputs import KL_MEASURES, OutputError, measures_of
from sparc.measure.profile import node_times
from sparc.passes.channel_crop import probe_feeds
from sparc.runtime import OrtRunner

logger = logging.getLogger(__name__)

FAMILIES = ("ChannelCrop", "SliceRowsColumns", "BlockSparsity", "Reconstruct", "TokenRouter")
METRICS = ("cosine", "kl", "top1", "error")
KINDS = ("units", "heads")
PROBE_RATIO = 0.5
MAX_RATIO = 0.9
RATIO_RANGE = {"units": 0.6, "heads": 0.5}
STREAM_RANGE = 0.4
BLOCK_DENSITIES = (1.0, 0.5, 0.3, 0.2, 0.1)
BLOCK_OWL = (0.0, 0.05, 0.1)
ROUTE_KEEP = (1.0, 0.9, 0.8, 0.7)
RECONSTRUCT_STEPS = 50
DEFAULT_TIME_BUDGET = 15 * 60.0
STARTUP_TRIALS = 4
MIN_SPEEDUP = 1.03  # a choice must beat the original by more than timing noise, when measured again
ORIGINAL = [{"FoldConstants": {}}, {"RemoveUnused": {}}]  # the answer when no candidate holds up: lossless only
_FLOOR = 1e-9


@dataclasses.dataclass(frozen=True)
class Settings:
    """How every candidate is compiled and measured (the same for all of them)."""

    backend: str = "onnxruntime"
    target: str = "cpu"
    threads: int | None = 1
    metric: str | Callable | None = None
    dense_score: float | None = None  # a callable metric's score of the original
    latency_rounds: int = 10
    latency_inputs: Mapping[str, np.ndarray] | None = None


@dataclasses.dataclass
class Measurement:
    """One compiled candidate: speed against the original, loss, size, time."""

    speedup: float
    loss: float
    fidelity: str
    params: float  # fraction of the original's
    macs: float | None
    original_ms: float
    compiled_ms: float
    backend: str
    compile_seconds: float


@dataclasses.dataclass
class Group:
    """A channel group the search may shrink: its first producing node names it."""

    name: str
    kind: str
    units: int
    sensitivity: float = math.inf
    ms: float = 1.0  # profiled time of the nodes touching the group's channels


@dataclasses.dataclass
class Space:
    """What the graph allows (module docstring, step 1) and the groups' sensitivities."""

    groups: list[Group]
    stream: bool
    blocks: bool
    reconstruct: bool
    routing: int = 0  # attention blocks TokenRouter can route around (0: not applicable)

    def kinds(self) -> list[str]:
        return [k for k in KINDS if any(g.kind == k for g in self.groups)]

    def suggest(self, trial) -> dict[str, Any]:
        """Ask an Optuna trial for one value of every knob this space has."""
        params = {f"ratio_{k}": trial.suggest_float(f"ratio_{k}", 0.0, RATIO_RANGE[k], step=0.05)
                  for k in self.kinds()}
        if len(self.groups) > 1:
            params["allocation"] = trial.suggest_float("allocation", 0.0, 1.0, step=0.25)
        if self.stream:
            params["stream"] = trial.suggest_float("stream", 0.0, STREAM_RANGE, step=0.05)
        if self.blocks:
            params["block_density"] = trial.suggest_categorical("block_density", BLOCK_DENSITIES)
            params["block_owl"] = trial.suggest_categorical("block_owl", BLOCK_OWL)
        if self.reconstruct:
            params["reconstruct"] = trial.suggest_categorical("reconstruct", (False, True))
        if self.routing:
            params["route_keep"] = trial.suggest_categorical("route_keep", ROUTE_KEEP)
            params["route_start"] = trial.suggest_int("route_start", self.routing // 2, self.routing - 1)
        return params

    def ratios(self, params: Mapping[str, Any]) -> dict[str, float]:
        """{escaped group name: ratio} per step 3 of the module docstring (zeros left out)."""
        ratios = {}
        for kind in self.kinds():
            members = [g for g in self.groups if g.kind == kind]
            base = float(params.get(f"ratio_{kind}", 0.0))
            if base <= 0:
                continue
            logs = np.log([max(g.sensitivity, _FLOOR) / max(g.ms, _FLOOR) for g in members])
            spread = logs - logs.mean()
            scale = np.abs(spread).max()
            z = spread / scale if scale > 0 else np.zeros_like(spread)
            for group, zg in zip(members, z):
                ratio = round(float(np.clip(base * (1.0 - params.get("allocation", 0.0) * zg), 0.0, MAX_RATIO)), 2)
                if ratio > 0:
                    ratios[glob.escape(group.name)] = ratio
        return ratios

    def recipe(self, params: Mapping[str, Any]) -> list[dict]:
        """The recipe (``[{PassName: options}]``) of one candidate."""
        passes: list[dict] = []
        if params.get("stream", 0.0) > 0:
            passes.append({"SliceRowsColumns": {"ratio": float(params["stream"])}})
        ratios = self.ratios(params)
        if ratios:
            heads = params.get("ratio_heads", 0.0) > 0
            passes.append({"ChannelCrop": {"ratio": ratios, "importance": "activation", "bias_compensation": True,
                                           "reconstruct": True, "round_to": 1 if heads else 8,
                                           "sequential": False}})
        if params.get("block_density", 1.0) < 1.0:
            owl = {"owl": float(params["block_owl"])} if params.get("block_owl", 0.0) > 0 else {}
            passes.append({"BlockSparsity": {"block": [16, 1], "density": float(params["block_density"]),
                                             "method": "sparsegpt"} | owl})
        if passes and params.get("reconstruct"):
            passes.append({"Reconstruct": {"steps": RECONSTRUCT_STEPS}})
        if params.get("route_keep", 1.0) < 1.0:
            passes.append({"TokenRouter": {"keep": float(params["route_keep"]),
                                           "start_block": int(params["route_start"]), "router": "learned"}})
        return passes


@dataclasses.dataclass
class TrialRecord:
    """One candidate (``measurement`` None: not measured, ``error`` says why: it failed, it
    compressed nothing, or it repeated an earlier trial's recipe)."""

    number: int
    params: dict[str, Any]
    recipe: list[dict]
    measurement: Measurement | None
    error: str | None = None
    within_budget: bool = False
    on_front: bool = False


@dataclasses.dataclass
class TuneResult:
    """The chosen compiled model, its recipe, every candidate measured and the front."""

    compiled: CompiledModel
    recipe: dict
    trials: list[TrialRecord]
    chosen: TrialRecord | None
    max_loss: float
    metric: str
    message: str
    space: Space
    seconds: float

    def recipe_yaml(self) -> str:
        """The chosen recipe as YAML, re-runnable with ``sparc compile --recipe``."""
        return yaml.safe_dump(self.recipe, sort_keys=False)

    def front(self) -> list[TrialRecord]:
        """The measured Pareto front (no other candidate is both faster and better), by speed."""
        return sorted((t for t in self.trials if t.on_front), key=lambda t: -t.measurement.speedup)

    def table(self) -> str:
        """Every measured candidate, fastest first (markdown)."""
        rows = ["| trial | speedup | loss | fidelity | params | MACs | within budget | front | compile s | recipe |",
                "|---:|---:|---:|---|---:|---:|---|---|---:|---|"]
        measured = [t for t in self.trials if t.measurement is not None]
        for t in sorted(measured, key=lambda t: -t.measurement.speedup):
            m = t.measurement
            chosen = " **(chosen)**" if t is self.chosen else ""
            macs = f"{m.macs:.3f}" if m.macs is not None else "?"
            rows.append(f"| {t.number}{chosen} | {m.speedup:.2f}× | {m.loss:.4g} | {m.fidelity} | {m.params:.3f} | "
                        f"{macs} | {'yes' if t.within_budget else 'no'} | {'yes' if t.on_front else ''} | "
                        f"{m.compile_seconds:.0f} | {describe(t.recipe)} |")
        failed = [t for t in self.trials if t.measurement is None]
        rows += [f"| {t.number} | not measured | | {t.error} | | | | | | {describe(t.recipe)} |" for t in failed]
        return "\n".join(rows)

    def sensitivity_table(self) -> str:
        rows = ["| group | kind | units | loss at half the units removed | profiled ms of its nodes |",
                "|---|---|---:|---:|---:|"]
        rows += [f"| {g.name} | {g.kind} | {g.units} | {g.sensitivity:.4g} | {g.ms:.3f} |" for g in self.space.groups]
        return "\n".join(rows)

    def to_markdown(self) -> str:
        return "\n".join([
            "# sparc tune", "",
            f"Budget: {self.metric} loss ≤ {self.max_loss:g} on held-out calibration batches. {self.message}", "",
            f"{len(self.trials)} candidates in {self.seconds:.0f} s.", "",
            "## Chosen recipe", "", "```yaml", self.recipe_yaml().rstrip(), "```", "",
            "## Candidates measured", "", self.table(), "",
            "## Sensitivity of each group (the cheap model that guides the allocation)", "",
            self.sensitivity_table(), "", str(self.compiled.report)])

    def to_dict(self) -> dict:
        return {"max_loss": self.max_loss, "metric": self.metric, "message": self.message, "recipe": self.recipe,
                "seconds": self.seconds, "chosen": self.chosen.number if self.chosen else None,
                "trials": [dataclasses.asdict(t) for t in self.trials],
                "sensitivity": [dataclasses.asdict(g) for g in self.space.groups],
                "report": self.compiled.report.to_dict()}

    def plot(self, path: str | Path) -> Path:
        """Write a PNG of speedup against loss: every candidate, the front, the budget, the choice."""
        matplotlib = require_matplotlib()
        matplotlib.use("Agg")
        from matplotlib import pyplot

        measured = [t for t in self.trials if t.measurement is not None]
        figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
        axes.axvline(self.max_loss, color="tab:green", linestyle="--", linewidth=1, label="budget")
        axes.axhline(1.0, color="gray", linewidth=0.8)
        for t in measured:
            axes.scatter(t.measurement.loss, t.measurement.speedup, s=30, zorder=3,
                         color="tab:blue" if t.within_budget else "tab:gray", marker="o" if t.within_budget else "x")
        front = self.front()
        axes.plot([t.measurement.loss for t in front], [t.measurement.speedup for t in front], color="tab:blue",
                  linewidth=1, label="measured front")
        if self.chosen is not None:
            m = self.chosen.measurement
            axes.scatter(m.loss, m.speedup, s=160, marker="*", color="tab:red", zorder=4, label="chosen")
        axes.scatter(0.0, 1.0, marker="s", color="black", s=30, zorder=4, label="original")
        axes.set_xscale("symlog", linthresh=max(self.max_loss / 10, 1e-6))
        axes.set_xlabel(f"{self.metric} loss on held-out calibration batches")
        axes.set_ylabel("speedup vs the original (measured side by side)")
        axes.set_title(f"sparc tune: {len(measured)} candidates")
        axes.legend(fontsize=7)
        figure.tight_layout()
        path = Path(path)
        staging = path.with_name(f".{path.name}.partial.png")
        figure.savefig(staging)
        pyplot.close(figure)
        staging.replace(path)
        return path

    def write(self, markdown: str | Path | None = None, recipe: str | Path | None = None,
              plot: str | Path | None = None) -> None:
        """Write the report, the recipe YAML and the plot where paths are given."""
        if markdown:
            write_atomic(markdown, self.to_markdown())
        if recipe:
            write_atomic(recipe, self.recipe_yaml())
        if plot:
            self.plot(plot)


@dataclasses.dataclass
class Progress:
    """What a progress display shows after each candidate."""

    trials: int
    within_budget: int
    best_speedup: float | None
    best_loss: float | None
    elapsed: float
    budget: float | None
    phase: str


def describe(recipe: Sequence[Mapping]) -> str:
    """A recipe in a few words: ``ChannelCrop 12 groups ≤0.45, Reconstruct``."""
    if not recipe:
        return "original"
    words = []
    for entry in recipe:
        name, options = next(iter(entry.items()))
        if name == "ChannelCrop":
            ratios = options["ratio"].values()
            words.append(f"ChannelCrop {len(ratios)} groups {min(ratios):.2f}–{max(ratios):.2f}")
        elif name == "SliceRowsColumns":
            words.append(f"slice stream {options['ratio']:.2f}")
        elif name == "BlockSparsity":
            spread = f" OWL {options['owl']:g}" if options.get("owl") else ""
            words.append(f"16×1 blocks d{options['density']:g}{spread}")
        elif name == "TokenRouter":
            words.append(f"route keep {options['keep']:g} from block {options['start_block']}")
        else:
            words.append(name)
    return ", ".join(words)


def loss_of(error: OutputError, metric: str | None) -> float:
    """The worst output's loss under ``metric`` (module docstring); inf for a broken output."""
    losses = []
    for output in error.outputs:
        if output.exact:
            if output.mismatched:
                return math.inf
            continue
        if not output.finite:
            return math.inf
        name = metric or ("cosine" if output.measure == "cosine" else "kl")
        value = {"cosine": None if output.cosine is None else 1.0 - output.cosine,
                 "kl": output.kl, "top1": None if output.top1 is None else 1.0 - output.top1,
                 "error": output.mean_rel}[name]
        if value is not None:
            losses.append(max(float(value), 0.0))
    if not losses:
        raise TuneError(f"metric {metric!r} measures none of the model's outputs "
                        f"({', '.join(f'{o.name}: {o.measure}' for o in error.outputs)})")
    return max(losses)


def _loss(compiled: CompiledModel, error: OutputError | None, settings: Settings) -> float:
    """A callable metric's drop from the original's score, or :func:`loss_of` the error."""
    if callable(settings.metric):
        return max(settings.dense_score - float(settings.metric(compiled.run)), 0.0)
    return loss_of(error, settings.metric) if error is not None else 0.0


def evaluate(model: ir.Model, recipe: list[dict], calibration: CalibrationData,
             settings: Settings) -> tuple[Measurement, CompiledModel]:
    """Compile ``recipe`` on ``model`` and measure it: a pure function of its arguments."""
    start = time.perf_counter()
    compiled = compile(model, calibration=calibration, recipe={"passes": recipe}, backend=settings.backend,
                       target=settings.target, threads=settings.threads, latency_rounds=settings.latency_rounds,
                       latency_inputs=settings.latency_inputs)
    seconds = time.perf_counter() - start
    report = compiled.report
    loss = _loss(compiled, report.error, settings)
    latency = report.latency
    return Measurement(
        speedup=latency.speedup, loss=loss, fidelity=report.error.fidelity() if report.error else "",
        params=report.final.params / max(report.original.params, 1), macs=report.macs_ratio,
        original_ms=latency.original_ms,
        compiled_ms=latency.compiled_ms, backend=report.backend, compile_seconds=seconds,
    ), compiled


def tune(
    model,
    *,
    calibration,
    max_loss: float,
    metric: str | Callable | None = None,
    backend: str = "onnxruntime",
    target: str = "cpu",
    threads: int | None = 1,
    passes: Sequence[str] | None = None,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    trials: int | None = None,
    store: str | Path | None = None,
    example_inputs=None,
    dynamic_axes=None,
    latency_batch: int | None = None,
    seed: int = 0,
    progress: Callable[[Progress], None] | None = None,
    ray: str | Engine | None = None,
) -> TuneResult:
    """The fastest model within ``max_loss`` (module docstring), as a :class:`TuneResult`.

    ``calibration``: at least 2 batches (the last ones are held out for quality).
    ``time_budget`` in seconds (None: only ``trials`` bounds the search); ``store``: a file
    where every measured candidate is kept, so a rerun with the same store resumes.
    ``latency_batch``: time on the first rows of the first held-out batch (default: all).
    ``ray``: where candidates are evaluated (None: here, one at a time; ``"local"``: a Ray
    cluster started on this machine; a cluster address; or an engine of :mod:`sparc.distributed`).
    """
    import optuna

    start = time.perf_counter()
    _check_options(max_loss, metric, passes, time_budget, trials, latency_batch)
    backends.check_backend(backend, target)
    ir_model = capture(model, example_inputs=example_inputs, dynamic_axes=dynamic_axes)
    data = as_calibration(calibration, ir_model)
    if len(data) < 2:
        raise TuneError(f"tune needs at least 2 calibration batches (one is held out for quality), got {len(data)}")
    held_out = data.split(holdout_size(len(data)))[1]
    settings = _settings(ir_model, held_out, metric, backend, target, threads, latency_batch)
    study = _study(optuna, store, ir_model, settings, max_loss, seed)
    report = _reporter(progress, start, time_budget)
    with session(ray) as engine:
        work = _Work(engine, ir_model, data, settings)
        space = _space(ir_model, data, settings, set(passes or FAMILIES), study, report, work)
        count = _remaining_trials(study, trials)
        if not study.trials:
            for params in _seeds(space, max_loss):
                study.enqueue_trial(params)
        deadline = None if time_budget is None else max(start + time_budget, time.perf_counter() + 1.0)
        _search(study, space, work, max_loss, count, deadline, report)
    records = _records(study, max_loss)
    compiled, chosen, recipe, message = _choose(records, ir_model, data, settings, max_loss)
    name = metric if isinstance(metric, str) else ("callable" if callable(metric) else "default (cosine or KL)")
    return TuneResult(compiled, recipe, records, chosen, max_loss, name, message, space,
                      time.perf_counter() - start)


def _check_options(max_loss, metric, passes, time_budget, trials, latency_batch) -> None:
    if not isinstance(max_loss, (int, float)) or not max_loss >= 0:
        raise TuneError(f"max_loss must be a number ≥ 0, got {max_loss!r}")
    if metric is not None and not callable(metric) and metric not in METRICS:
        raise TuneError(f"unknown metric {metric!r}; choose from {list(METRICS)} or give a callable")
    if unknown := sorted(set(passes or ()) - set(FAMILIES)):
        raise TuneError(f"unknown pass families {unknown}; tune searches {list(FAMILIES)}")
    if time_budget is None and trials is None:
        raise TuneError("give a time budget or a number of trials (or both)")
    if time_budget is not None and time_budget <= 0:
        raise TuneError(f"time_budget must be positive seconds, got {time_budget!r}")
    if trials is not None and trials < 1:
        raise TuneError(f"trials must be ≥ 1, got {trials!r}")
    if latency_batch is not None and latency_batch < 1:
        raise TuneError(f"latency_batch must be ≥ 1, got {latency_batch!r}")


def _settings(model, held_out, metric, backend, target, threads, latency_batch) -> Settings:
    first = held_out.batches[0]
    latency_inputs = None
    if latency_batch is not None:
        latency_inputs = {k: np.asarray(v)[:latency_batch] for k, v in first.items()}
    dense_score = None
    if callable(metric):
        runner = OrtRunner(model, threads=threads)
        dense_score = float(metric(runner.run))
    elif metric is not None:
        _check_metric(model, metric)
    return Settings(backend, target, threads, metric, dense_score, latency_inputs=latency_inputs)


def _check_metric(model: ir.Model, metric: str) -> None:
    """A named metric must measure at least one of the model's outputs."""
    measures = measures_of(model)
    fits = {"cosine": ("cosine",), "kl": KL_MEASURES, "top1": KL_MEASURES, "error": ("cosine", *KL_MEASURES)}
    if not any(m in fits[metric] for m in measures.values()):
        raise TuneError(f"metric {metric!r} measures none of the model's outputs "
                        f"({', '.join(f'{k}: {v}' for k, v in measures.items())})")


def _study(optuna, store, model: ir.Model, settings: Settings, max_loss: float, seed: int):
    """An Optuna study, in memory or in the journal file ``store`` (resumed when it exists)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # multivariate TPE is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS, multivariate=True)
    storage, name = None, "sparc-tune"
    if store is not None:  # the study in a store is named after what it measured
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(store)))
        name = f"sparc-tune-{_fingerprint(model, settings, max_loss)}"
    return optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                               directions=["maximize", "minimize"], load_if_exists=True)


def _fingerprint(model: ir.Model, settings: Settings, max_loss: float) -> str:
    """Same model, backend, target, threads, metric and budget: same study in a store."""
    digest = hashlib.sha256(ir.serde.serialize_model(model).SerializeToString(deterministic=True))
    metric = settings.metric if isinstance(settings.metric, str) or settings.metric is None else "callable"
    digest.update(repr((settings.backend, settings.target, settings.threads, metric, max_loss,
                        sorted((k, v.shape) for k, v in (settings.latency_inputs or {}).items()))).encode())
    return digest.hexdigest()[:16]


def _space(model: ir.Model, data: CalibrationData, settings: Settings, families: set[str], study,
           report, work: _Work) -> Space:
    """The space of step 1 with each group's sensitivity (step 2), kept in the study's store."""
    stored = study.user_attrs.get("space")
    if stored is not None:
        return Space([Group(**g) for g in stored["groups"]], stored["stream"], stored["blocks"],
                     stored["reconstruct"], stored["routing"])
    groups = _prunable_groups(model, data, settings) if "ChannelCrop" in families else []
    sensitivities = work.gather(_sensitivity, [(g,) for g in groups],
                                lambda done: report([], f"sensitivity {done}/{len(groups)}"))
    for group, sensitivity in zip(groups, sensitivities):
        group.sensitivity = sensitivity
    space = Space(
        [g for g in groups if math.isfinite(g.sensitivity)],
        stream="SliceRowsColumns" in families and _has(find_transformer, model),
        blocks="BlockSparsity" in families and settings.backend == "tvm",
        reconstruct="Reconstruct" in families and _torch_available() and _has(find_segments, model),
        routing=len(find_blocks(model)) if "TokenRouter" in families and _has(find_blocks, model) else 0,
    )
    study.set_user_attr("space", dataclasses.asdict(space))
    return space


def _prunable_groups(model: ir.Model, data: CalibrationData, settings: Settings) -> list[Group]:
    groups = find_channel_groups(model, observed_shapes(model, list(model.graph), probe_feeds(model, data)))
    feeds = settings.latency_inputs or data.split(holdout_size(len(data)))[1].batches[0]
    times = node_times(model, feeds, threads=settings.threads)
    return [Group(g.producers[0], _kind(g), len(g.units), ms=_group_ms(g, times))
            for g in groups if g.prunable and g.producers]


def _group_ms(group: ChannelGroup, times: Mapping[str, float]) -> float:
    """Profiled milliseconds of the nodes that write or read any of ``group``'s channels."""
    nodes = set()
    for space in group.spaces:
        nodes.update(n.name for n in space.value.consumers())
        if (producer := space.value.producer()) is not None:
            nodes.add(producer.name)
    return sum(times.get(name, 0.0) for name in nodes)


def _kind(group: ChannelGroup) -> str:
    width = max((len(indices) for indices in group.units[0].values()), default=1)
    return "heads" if width > 1 else "units"


def _sensitivity(model: ir.Model, data: CalibrationData, settings: Settings, group: Group) -> float:
    """Loss when ``group`` alone loses half its units; inf when the crop does not apply."""
    probe = [{"ChannelCrop": {"ratio": {glob.escape(group.name): PROBE_RATIO}, "importance": "activation",
                              "round_to": 1, "min_channels": 1, "sequential": False,
                              "bias_compensation": False, "reconstruct": False}}]
    scored = callable(settings.metric)  # a callable metric runs the model itself: no validation run needed
    try:
        compiled = compile(model, calibration=data, recipe={"passes": probe}, threads=settings.threads,
                           latency_rounds=0, validate=not scored)
        entry = compiled.report.passes[-1]
        if not entry.modified or (entry.error is None and not scored):
            return math.inf
        return _loss(compiled, entry.error, settings)
    except SparcError as exc:
        logger.info("group %s cannot be cropped: %s", group.name, exc)
        return math.inf


def _has(finder, model: ir.Model) -> bool:
    try:
        finder(model)
    except StructureError:
        return False
    return True


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


SEEDS = ((1.0, 1.0, False), (0.5, 1.0, False), (1.0, 2.0, False), (0.5, 0.5, False), (0.5, 3.0, True))


def _seeds(space: Space, max_loss: float) -> list[dict[str, Any]]:
    """First candidates from the cheap model, before the sampler learns anything.

    Removing a fraction r of a group's least important units is assumed to cost
    s_g·(r/0.5)² (its measured loss at half, quadratic for small cuts) and losses to add
    over groups. Each kind gets an equal share of a target loss, and its ratio solves
    Σ s_g·(r·f_g/0.5)² = share (f_g the allocation's factor), capped so that no group loses more
    than the half it was measured at. Seeds (α, target in budgets, Reconstruct): ``SEEDS``.
    """
    seeds = []
    for alpha, target, reconstruct in SEEDS:
        if reconstruct and not space.reconstruct:
            continue
        params = _neutral(space) | _seed_ratios(space, target * max_loss, alpha)
        if space.reconstruct:
            params["reconstruct"] = reconstruct
        if any(v for k, v in params.items() if k.startswith("ratio_")) and params not in seeds:
            seeds.append(params)
    return seeds


def _seed_ratios(space: Space, target: float, alpha: float) -> dict[str, float]:
    params: dict[str, float] = {"allocation": alpha} if len(space.groups) > 1 else {}
    kinds = space.kinds()
    for kind in kinds:
        members = {glob.escape(g.name): g for g in space.groups if g.kind == kind}
        factors = {name: ratio / 0.5 for name, ratio in
                   space.ratios({f"ratio_{kind}": 0.5, "allocation": params.get("allocation", 0.0)}).items()}
        cost = sum(members[name].sensitivity * f**2 for name, f in factors.items())
        ratio = 0.5 * math.sqrt(target / len(kinds) / cost) if cost > 0 else math.inf
        ratio = min(ratio, 0.5 / max(factors.values(), default=1.0), RATIO_RANGE[kind])
        params[f"ratio_{kind}"] = max(0.05, math.floor(ratio * 20) / 20)
    return params


def _neutral(space: Space) -> dict[str, Any]:
    """Every knob of ``space`` at 'no change'."""
    params: dict[str, Any] = {f"ratio_{k}": 0.0 for k in space.kinds()}
    if len(space.groups) > 1:
        params["allocation"] = 0.0
    if space.stream:
        params["stream"] = 0.0
    if space.blocks:
        params["block_density"], params["block_owl"] = 1.0, 0.0
    if space.reconstruct:
        params["reconstruct"] = False
    if space.routing:
        params["route_keep"], params["route_start"] = 1.0, space.routing - 1
    return params


class _Work:
    """Candidate compiles on an engine: the model and data go to it once (to Ray serialized)."""

    def __init__(self, engine: Engine, model: ir.Model, data: CalibrationData, settings: Settings):
        local = isinstance(engine, InProcess)
        if not local and weight_bytes(model) >= PROTOBUF_LIMIT - 2**26:
            raise TuneError("tune on Ray sends the model to its workers serialized, which protobuf cannot "
                            "do over 2 GB: tune without ray")
        self.engine = engine
        self.model = engine.put(model if local else ir.serde.serialize_model(model))
        self.data = engine.put(data)
        self.settings = engine.put(settings)

    def submit(self, fn: Callable, *args) -> Task:
        """``fn(model, data, settings, *args)`` on the engine."""
        return self.engine.submit(fn, self.model, self.data, self.settings, *args)

    def gather(self, fn: Callable, calls: Sequence[tuple], done: Callable[[int], None]) -> list:
        """``fn`` over every argument tuple, up to the engine's workers at once; results in
        call order; ``done(count)`` after each finishes."""
        results: dict[int, Any] = {}
        pending: dict[Task, int] = {}
        queue = list(enumerate(calls))
        while queue or pending:
            while queue and len(pending) < self.engine.workers:
                index, args = queue.pop(0)
                pending[self.submit(fn, *args)] = index
            for task in self.engine.wait(list(pending)):
                results[pending.pop(task)] = task.result()
                done(len(results))
        return [results[i] for i in range(len(calls))]


def _search(study, space: Space, work: _Work, max_loss: float, count: int | None, deadline: float | None,
            report) -> None:
    """Ask, evaluate, tell until ``count`` trials were asked or ``deadline`` passed (then the
    evaluations under way finish), up to the engine's workers at once. An unexpected error
    fails the trials still open and is raised."""
    import optuna

    pending: dict[Task, Any] = {}
    asked = 0
    trial = None
    try:
        while True:
            while len(pending) < work.engine.workers and (count is None or asked < count) and \
                    (deadline is None or time.perf_counter() < deadline):
                trial, asked = study.ask(), asked + 1
                recipe = _proposal(trial, space, [t.user_attrs["recipe"] for t in pending.values()])
                if recipe is not None:
                    pending[work.submit(_evaluation, recipe)] = trial
                told, trial = trial, None
                if recipe is None:
                    _tell(study, told, None, max_loss, report)
            if not pending:
                return
            for task in work.engine.wait(list(pending)):
                outcome = task.result()
                _tell(study, pending.pop(task), outcome, max_loss, report)
    except BaseException:
        for open_trial in [*pending.values(), *([trial] if trial is not None else [])]:
            study.tell(open_trial, state=optuna.trial.TrialState.FAIL)
        raise


def _proposal(trial, space: Space, running: list[list[dict]]) -> list[dict] | None:
    """The trial's recipe to evaluate, or None (the reason in its ``error``): nothing to
    compress, or the recipe of a trial measured or under way."""
    recipe = space.recipe(space.suggest(trial))
    trial.set_user_attr("recipe", recipe)
    if not recipe:
        trial.set_user_attr("error", "nothing to compress (all ratios 0)")
        return None
    twin = _measured_twin(trial, recipe)
    if twin is None and recipe in running:
        twin = "under way"
    if twin is not None:
        trial.set_user_attr("error", f"same recipe as trial {twin}, not measured again")
        return None
    return recipe


def _evaluation(model, data: CalibrationData, settings: Settings, recipe: list[dict]) -> Measurement | str:
    """A candidate's measurement, or the first line of the SparcError that stopped it."""
    try:
        return evaluate(model, recipe, data, settings)[0]
    except SparcError as exc:
        return str(exc).splitlines()[0][:300]


def _tell(study, trial, outcome: Measurement | str | None, max_loss: float, report) -> None:
    """Tell the study how ``trial`` ended: with a measurement, its (speedup, loss) under the
    constraint loss ≤ max_loss; else pruned (``outcome`` the error, if any)."""
    import optuna

    if isinstance(outcome, Measurement):
        trial.set_user_attr("measurement", dataclasses.asdict(outcome))
        trial.set_constraint("loss", min(outcome.loss, 1e9) - max_loss)
        study.tell(trial, (outcome.speedup, min(outcome.loss, 1e9)))
    else:
        if outcome is not None:
            trial.set_user_attr("error", outcome)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    report(_records(study, max_loss), "searching")


def _measured_twin(trial, recipe: list[dict]) -> int | None:
    """The number of an earlier trial of the same study that measured ``recipe``, if any."""
    for other in trial.study.get_trials(deepcopy=False):
        if other.number != trial.number and "measurement" in other.user_attrs and other.user_attrs.get("recipe") == recipe:
            return other.number
    return None


def _remaining_trials(study, trials: int | None) -> int | None:
    """Trials still to run: ``trials`` less those finished (enqueued seeds not yet run don't count)."""
    import optuna

    if trials is None:
        return None
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL))
    return max(trials - len(finished), 0)


def _records(study, max_loss: float) -> list[TrialRecord]:
    """Every finished trial of the study, with its budget and front flags."""
    import optuna

    records = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                          optuna.trial.TrialState.PRUNED)):
        raw = trial.user_attrs.get("measurement")
        measurement = Measurement(**raw) if raw else None
        record = TrialRecord(trial.number, dict(trial.params), trial.user_attrs.get("recipe", []), measurement,
                             trial.user_attrs.get("error"))
        record.within_budget = measurement is not None and measurement.loss <= max_loss
        records.append(record)
    measured = [r for r in records if r.measurement is not None]
    for r in measured:
        r.on_front = not any(_dominates(o.measurement, r.measurement) for o in measured if o is not r)
    return records


def _dominates(a: Measurement, b: Measurement) -> bool:
    return a.speedup >= b.speedup and a.loss <= b.loss and (a.speedup > b.speedup or a.loss < b.loss)


def _choose(records, model, data, settings, max_loss):
    """(compiled, chosen record, recipe, message): the fastest candidate within the budget,
    compiled again from its recipe and measured again; the original if none holds up."""
    feasible = sorted((r for r in records if r.within_budget and r.measurement.speedup >= MIN_SPEEDUP),
                      key=lambda r: -r.measurement.speedup)
    for record in feasible[:3]:
        measurement, compiled = evaluate(model, record.recipe, data, settings)
        if measurement.loss <= max_loss and measurement.speedup >= MIN_SPEEDUP:
            recipe = _recipe_document(record.recipe, settings)
            return compiled, record, recipe, (
                f"Chosen: trial {record.number}, {measurement.speedup:.2f}× faster at loss {measurement.loss:.4g} "
                f"(measured again from its recipe; {measurement.fidelity}).")
        logger.info("trial %d did not hold up when compiled again (%.2f×, loss %.4g)", record.number,
                    measurement.speedup, measurement.loss)
    _, compiled = evaluate(model, ORIGINAL, data, settings)
    measured = [r for r in records if r.measurement is not None]
    closest = min(measured, key=lambda r: r.measurement.loss, default=None)
    detail = (f"; the smallest loss measured was {closest.measurement.loss:.4g} (trial {closest.number}, "
              f"{closest.measurement.speedup:.2f}×)" if closest else "")
    message = (f"No candidate was {MIN_SPEEDUP:g}× faster than the original within loss {max_loss:g}{detail}: "
               "the result is the original model (lossless clean-up only).")
    return compiled, None, _recipe_document(ORIGINAL, settings), message


def _recipe_document(passes: list[dict], settings: Settings) -> dict:
    return {"passes": passes, "backend": settings.backend, "target": settings.target}


def _reporter(progress, start: float, budget: float | None):
    """A function (records, phase) that logs progress and forwards it to ``progress``."""

    def report(records: list[TrialRecord], phase: str) -> None:
        within = [r for r in records if r.within_budget and r.measurement.speedup > 1.0]
        best = max(within, key=lambda r: r.measurement.speedup, default=None)
        state = Progress(len(records), len(within), best.measurement.speedup if best else None,
                         best.measurement.loss if best else None, time.perf_counter() - start, budget, phase)
        logger.info("tune: %s, %d candidates, %d within budget", phase, state.trials, state.within_budget)
        if progress is not None:
            progress(state)

    return report


def require_matplotlib():
    """The matplotlib module, or a TuneError saying how to get it (it is not a core dependency)."""
    try:
        import matplotlib
    except ImportError:
        raise TuneError("plotting the front needs matplotlib: pip install matplotlib") from None
    return matplotlib


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m`` or ``1.5h``."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    scale = units.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise TuneError(f"not a duration: {text!r} (examples: 600, 90s, 15m, 1.5h)") from None
    if seconds <= 0:
        raise TuneError(f"a duration must be positive, got {text!r}")
    return seconds
