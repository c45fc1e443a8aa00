"""``sparc.compile``: capture, run a recipe's passes with verification, prepare a backend, report."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparc import backends
from sparc.backends.onnxruntime import StagedRunner, export_onnx
from sparc.backends.targets import CHECKED_TARGETS, TargetCheck, verify_models
from sparc.backends.tvm import TARGETS, TvmBuild, export_library
from sparc.capture import capture, load_onnx
from sparc.capture.onnx import external_bytes
from sparc.capture.torch import is_torch_module
from sparc.data import CalibrationData, as_calibration, check_feeds, feed_shapes, holdout_size
from sparc.distributed import Engine, session
from sparc.errors import BackendError, CalibrationError, UnsupportedModelError
from sparc.ir_utils import copy_model, use_weight_store
from sparc.measure.cost import count_macs, model_stats
from sparc.measure.latency import Latency, compare
from sparc.measure.memory import memory_bytes
from sparc.measure.outputs import TOLERANCES, OutputError
from sparc.ops import has_sparc_ops, lower_to_standard
from sparc.passes.canonicalize import Canonicalize
from sparc.passes.pipeline import Pipeline
from sparc.recipe import load_recipe
from sparc.report import Report
from sparc.runtime import OrtRunner, lowered

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("standard", "sparc")
FALLBACK_RATIO = 1.05  # TVM slower than this × the original in ORT: run in ORT instead


class CompiledModel:
    """A compiled model: run it, export it, read its report, or inspect its IR (``.model``).

    ``original`` is the captured model before any pass (None for a model from :func:`load`).
    """

    def __init__(
        self, model: ir.Model, runner, *, backend: str, target: str, report=None, original=None
    ):
        self.model = model
        self.original: ir.Model | None = original
        self.backend = backend
        self.target = target
        self.report: Report | None = report
        self._runner = runner

    @property
    def input_names(self) -> list[str]:
        return list(self._runner.input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self._runner.output_names)

    def run(self, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Run one batch given as {input name: array or tensor}; returns {output name: array}."""
        checked = check_feeds(feeds, self.model, "inputs")
        return self._runner.run(checked)

    def __call__(self, *args, **kwargs):
        """Run with positional inputs (in input order), keyword inputs, or one dict.

        Returns one numpy array for a single-output model, else a tuple in output order.
        """
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            feeds = dict(args[0])
        else:
            if len(args) > len(self.input_names):
                raise CalibrationError(
                    f"the model takes {len(self.input_names)} inputs {self.input_names}, "
                    f"got {len(args)} positional arguments"
                )
            feeds = dict(zip(self.input_names, args)) | kwargs
        outputs = self.run(feeds)
        values = tuple(outputs[name] for name in self.output_names)
        return values[0] if len(values) == 1 else values

    def export(self, path: str | os.PathLike, format: str = "standard") -> Path:
        """Write the model as ONNX, atomically.

        ``standard``: only standard ops (``ai.sparc`` ops lowered, weights decompressed), what
        stock ONNX Runtime and onnxruntime-web load. ``sparc``: keeps ``ai.sparc`` ops and
        their compressed weights (smaller; for sparc's backends and ``sparc.load``).
        """
        if format not in EXPORT_FORMATS:
            raise BackendError(f"unknown export format {format!r}; choose from {list(EXPORT_FORMATS)}")
        standard = format == "standard" and has_sparc_ops(self.model)
        return export_onnx(lower_to_standard(self.model) if standard else self.model, path)

    def export_library(self, path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]], *,
                       target: str = "cpu", threads: int | None = None) -> Path:
        """Compile the model with TVM for input ``shapes`` and write a shared library
        (``target`` ``cpu`` for this machine, ``aarch64`` cross-compiled), run by
        ``sparc.backends.tvm.load_library`` on a machine of that kind."""
        if target not in TARGETS:
            raise BackendError(f"unknown library target {target!r}; choose from {list(TARGETS)}")
        return export_library(self.model, path, {k: tuple(v) for k, v in shapes.items()}, target=target,
                              threads=threads)


def compile(
    model,
    *,
    example_inputs=None,
    dynamic_axes=None,
    calibration=None,
    recipe=None,
    backend: str | None = None,
    target: str | None = None,
    validate: bool = True,
    threads: int | None = None,
    backend_options: Mapping | None = None,
    latency_rounds: int = 10,
    latency_inputs: Mapping | None = None,
    fidelity: Mapping[str, str] | None = None,
    out_of_core: bool | None = None,
    ray: str | Engine | None = None,
) -> CompiledModel:
    """Capture ``model``, run ``recipe`` over it with verification, and prepare ``backend``.

    ``model`` is an ``nn.Module`` (with ``example_inputs``, optionally ``dynamic_axes``), an
    ONNX path, a ``ModelProto`` or an ``onnx_ir.Model``. ``recipe`` is a list of passes, a
    dict or a YAML/JSON path (None: the default recipe). ``backend`` and ``target`` default to
    the recipe's, else ``onnxruntime`` / ``cpu``. With ``validate``, every pass is checked
    numerically against the original on held-out calibration batches (or the example inputs),
    and the report times the original and compiled models side by side on
    ``latency_inputs`` (default: the first validation batch; ``latency_rounds`` = 0 skips
    timing). ``threads`` sets intra-op threads everywhere;
    ``backend_options`` go to the backend (ONNX Runtime: ``providers``, ``optimization`` =
    disable | basic | extended | all). ``fidelity`` overrides the measure of named outputs
    (``cosine``, ``logits``, ``probabilities``, ``log_probabilities``, ``exact``; see
    :mod:`sparc.measure.outputs`). ``out_of_core`` (an ONNX path with external data; None:
    when its weights exceed half this machine's memory): the weights stay memory-mapped, the
    passes' new weights go to a file as they are made, and calibration, checks and runs go one
    block at a time (see README "Larger than memory"); no latency is timed. ``ray``: where the
    passes calibrate (None: this process; ``"local"``: a Ray cluster started on this machine for
    this compile; a cluster address; or an engine of :mod:`sparc.distributed`, left open).
    """
    parsed = load_recipe(recipe)
    backend = backend or parsed.backend or "onnxruntime"
    target = target or parsed.target or "cpu"
    backends.check_backend(backend, target)
    streamed = _out_of_core(model, out_of_core, backend)
    ir_model = capture(model, example_inputs=example_inputs, dynamic_axes=dynamic_axes, mapped=streamed)
    if streamed:
        use_weight_store(ir_model)
    calib, valid, how = _split_data(ir_model, calibration, example_inputs, model)
    original = copy_model(ir_model)
    with session(ray) as engine:
        pipeline = Pipeline(
            [Canonicalize(), *parsed.passes] if parsed.canonicalize else parsed.passes, calibration=calib,
            validation=valid, validate=validate, threads=threads, fidelity=fidelity, engine=engine,
        )
        result = pipeline.run(ir_model)
    canonical, entries = (result.entries[0], result.entries[1:]) if parsed.canonicalize else (None, result.entries)
    if streamed:
        runner = StagedRunner(result.model, threads=threads)
    else:
        runner = backends.prepare(result.model, backend, target, threads=threads, **dict(backend_options or {}))
    data = valid or calib
    timed = check_feeds(latency_inputs, ir_model, "latency inputs") if latency_inputs is not None else None
    report = Report(
        model=_label(model),
        backend=backend,
        target=target,
        original=model_stats(original, data.batches[0] if data and not streamed else None),
        passes=entries,
        canonical=canonical,
        validation=how if validate else "disabled",
    )
    if streamed:
        peak = max((e.peak_rss or 0 for e in report.steps), default=0)
        report.notes.append(f"out of core: weights memory-mapped, calibrated, checked and run one block at a "
                            f"time; peak RSS of the passes {peak / 2**20:,.0f} MB; latency not timed")
    elif backend == "tvm" and data is not None:
        runner = _tvm_checked(runner, result.model, original, data.batches[0], report, threads,
                              latency_rounds if validate else 0, dict(backend_options or {}),
                              pipeline.measures, timed)
    elif validate and valid is not None and latency_rounds > 0:
        report.latency = _latency(original, runner, timed or valid.batches[0], threads, latency_rounds)
    if data is not None and report.backend.startswith("onnxruntime") and not streamed:
        report.executed_macs = _ort_executed_macs(result.model, data.batches[0])
    if target in CHECKED_TARGETS:
        report.target_check = _target_checked(result.model, original, target, data, threads,
                                              latency_rounds if validate else 0)
    return CompiledModel(
        result.model, runner, backend=backend, target=target, report=report, original=original
    )


def _out_of_core(source, requested: bool | None, backend: str) -> bool:
    """Whether to compile out of core: as requested, else when ``source`` is an ONNX path whose
    external data exceeds half of this machine's memory."""
    is_path = isinstance(source, (str, os.PathLike))
    if requested and not is_path:
        raise UnsupportedModelError("out_of_core needs the model as an ONNX file path (its weights in external data)")
    streamed = requested if requested is not None else is_path and external_bytes(Path(source)) > memory_bytes() / 2
    if streamed and backend != "onnxruntime":
        raise BackendError(f"an out-of-core compile exports ONNX for ONNX Runtime; backend {backend!r} needs "
                           "the model in memory")
    return streamed


def _ort_executed_macs(model: ir.Model, feeds) -> int | None:
    """MACs of one run as ONNX Runtime executes ``model``: its ``ai.sparc`` ops lowered to dense
    MatMuls (None: the model has none, so it runs as stored)."""
    standard = lowered(model)
    return None if standard is model else count_macs(standard, feeds)[0]


def load(path: str | os.PathLike, *, threads: int | None = None) -> CompiledModel:
    """Reopen an exported ONNX model for running and benchmarking in ONNX Runtime."""
    model = load_onnx(path)
    runner = backends.prepare(model, "onnxruntime", "cpu", threads=threads)
    return CompiledModel(model, runner, backend="onnxruntime", target="cpu")


def _split_data(ir_model, calibration, example_inputs, source):
    """(calibration, validation, description): hold out the last batches for validation."""
    calib = as_calibration(calibration, ir_model) if calibration is not None else None
    if calib is not None and len(calib) >= 2:
        held = holdout_size(len(calib))
        calib, valid = calib.split(held)
        return calib, valid, f"{held} held-out calibration batch(es)"
    if example_inputs is not None:
        feeds = _example_feeds(ir_model, example_inputs, source)
        return calib, CalibrationData([feeds]), "the example inputs"
    if calib is not None:
        return calib, calib, "the single calibration batch (also used to calibrate)"
    logger.warning("no calibration data or example inputs: passes are not checked numerically")
    return None, None, "none (no data given)"


def _example_feeds(ir_model, example_inputs, source):
    names = [v.name for v in ir_model.graph.inputs]
    if isinstance(example_inputs, Mapping):
        feeds = dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        feeds = dict(zip(names, example_inputs))
    else:
        feeds = {names[0]: example_inputs}
    if is_torch_module(source):
        feeds = {k: v for k, v in feeds.items() if k in names}
    return check_feeds(feeds, ir_model, "example inputs")


def _tvm_checked(runner, model, original, feeds, report, threads, rounds, options, measures, timed):
    """Compile TVM for the validation shapes, check its outputs against ONNX Runtime, time it.

    The promise that nothing gets slower: when the TVM model is measured slower than the
    original in ONNX Runtime (ratio above ``FALLBACK_RATIO``) and ``fallback`` (default) is on,
    the compiled model runs in ONNX Runtime instead and the report says so.
    """
    start = time.perf_counter()
    runner.prepare({k: np.asarray(v).shape for k, v in feeds.items()})
    report.tvm = build = TvmBuild(feed_shapes(feeds), time.perf_counter() - start, list(runner.choices),
                                  list(runner.unscheduled))
    reference = OrtRunner(model, threads=threads).run(feeds)
    build.agreement = OutputError.of_runs(runner.run(feeds), reference, measures)
    if build.agreement.exceeding(TOLERANCES["backend"]):
        raise BackendError("the TVM build disagrees with ONNX Runtime: "
                           f"{build.agreement.violations(TOLERANCES['backend'])}")
    if rounds <= 0:
        return runner
    feeds = timed or feeds
    report.latency = _latency(original, runner, feeds, threads, rounds)
    if report.latency.ratio > FALLBACK_RATIO and options.get("fallback", True):
        build.fallback = (
            f"TVM was slower than the original in ONNX Runtime (ratio {report.latency.ratio:.2f}): "
            "the compiled model runs in ONNX Runtime instead (backend option fallback=False keeps TVM)"
        )
        runner = OrtRunner(model, threads=threads)
        report.backend = "onnxruntime (fallback from tvm)"
        report.latency = _latency(original, runner, feeds, threads, rounds)
    return runner


def _target_checked(model, original, target, data, threads, rounds) -> TargetCheck:
    """The export run on ``target`` (onnxruntime-web, or aarch64 ONNX Runtime under qemu) on
    the first validation batch, compared with Python ONNX Runtime; wasm also times it there."""
    if data is None:
        raise CalibrationError(f"target {target!r} checks the export on real inputs: give calibration data "
                               "or example inputs")
    return verify_models(model, original, target, data.batches[0], threads=threads or 1, rounds=rounds)


def _latency(original: ir.Model, runner, feeds, threads, rounds) -> Latency:
    baseline = OrtRunner(original, threads=threads)
    result = compare(
        {"original": lambda: baseline.run(feeds), "compiled": lambda: runner.run(feeds)},
        rounds=rounds,
        warmup=2,
        threads=threads,
    )
    shapes = feed_shapes(feeds)
    return Latency(
        original_ms=result.timings["original"].median_ms,
        compiled_ms=result.timings["compiled"].median_ms,
        ratio=result.ratios["compiled"],
        threads=threads,
        rounds=rounds,
        inputs=shapes,
    )


def _label(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return type(model).__name__
