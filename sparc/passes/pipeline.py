"""Pipeline: run passes in order, verifying the IR after each one.

After every pass:
1. the ONNX checker must accept the model;
2. on the validation batches, the outputs must be finite and keep their shapes; each output
   is compared with the original's on its own (:mod:`sparc.measure.outputs`): a ``lossless``
   pass must keep every float output of the model it was given within the ``lossless``
   tolerance of its own scale and every integer output identical; a pass given
   ``max_error`` must keep every float output within it of the original (and integer outputs
   identical);
3. size and compute statistics, wall time (and the calibration and verification parts of
   it), and the process's peak resident memory while the pass ran (calibration included)
   are recorded for the report.
Recovery passes get a copy of the model as the leading lossless passes (Canonicalize,
FoldConstants) left it: the function given, in the form the compressing passes edit (weights
shared, never written).
Any failure, inside a pass or in its verification, becomes a :class:`PassError` naming the
pass and the passes that ran before it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from sparc.backends.onnxruntime import staged_outputs
from sparc.data import CalibrationData
from sparc.distributed import Engine
from sparc.errors import CalibrationError, PassError, SparcError
from sparc.ir_utils import check_model, weight_store
from sparc.measure.cost import ModelStats, model_stats
from sparc.measure.execute import calibration_seconds, run_batches
from sparc.measure.memory import PeakMemory
from sparc.measure.outputs import TOLERANCES, OutputError, measures_of
from sparc.passes.base import SparcPass

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PassEntry:
    """One pass of the pipeline and the model right after it."""

    name: str
    options: dict[str, Any]
    modified: bool
    seconds: float
    stats: ModelStats
    error: OutputError | None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    peak_rss: int | None = None  # bytes, the whole process, while the pass ran
    calibration_seconds: float = 0.0  # of ``seconds``: running the model on calibration data
    verify_seconds: float = 0.0  # after the pass: checking its outputs and measuring its size


@dataclasses.dataclass
class PipelineResult:
    model: ir.Model
    entries: list[PassEntry]


class Pipeline:
    """Runs ``passes`` over a model and verifies each result (see the module docstring)."""

    def __init__(
        self,
        passes: Sequence[SparcPass],
        *,
        calibration: CalibrationData | None = None,
        validation: CalibrationData | None = None,
        validate: bool = True,
        threads: int | None = None,
        fidelity: Mapping[str, str] | None = None,
        engine: Engine | None = None,
    ):
        self.passes = list(passes)
        self.engine = engine  # where the passes calibrate (None: this process)
        self.calibration = calibration
        self.validation = validation if validate else None
        self.threads = threads
        self.fidelity = dict(fidelity or {})

    def run(self, model: ir.Model) -> PipelineResult:
        """Run every pass in place on ``model``; return it with one report entry per pass."""
        self.names = [v.name for v in model.graph.outputs]
        self.measures = measures_of(model, self.fidelity)
        reference = self._reference_outputs(model)
        last = reference
        feeds = self._reference_feeds()
        self.original = None
        entries: list[PassEntry] = []
        for index, pass_ in enumerate(self.passes):
            previous = [p.name for p in self.passes[:index]]
            if self.original is None and not pass_.lossless and any(p.needs_reference for p in self.passes):
                self.original = model.clone()  # the reference for recovery: after the lossless passes
            start, calibrating = time.perf_counter(), calibration_seconds()
            with PeakMemory() as memory:
                modified = self._apply(pass_, model, previous)
            seconds, calibrating = time.perf_counter() - start, calibration_seconds() - calibrating
            problem = check_model(model)
            if problem:
                raise PassError(pass_.name, previous, f"the ONNX checker rejects its output: {problem}")
            start = time.perf_counter()
            error, last = self._verify(pass_, model, reference, last, previous)
            if modified or not entries:  # a pass that changed nothing leaves the stats as they were
                stats = model_stats(model, None if weight_store(model.graph) else feeds)
            entries.append(
                PassEntry(pass_.name, pass_.options(), modified, seconds, stats, error, pass_.details,
                          memory.bytes, calibration_seconds=calibrating,
                          verify_seconds=time.perf_counter() - start)
            )
            logger.info("%s: modified=%s in %.2fs", pass_.name, modified, seconds)
        return PipelineResult(model, entries)

    def _apply(self, pass_: SparcPass, model: ir.Model, previous: list[str]) -> bool:
        pass_.bind(self.calibration, self.threads, self.original, self.engine)
        try:
            return pass_(model).modified
        except PassError:
            raise
        except ir.passes.PreconditionError as exc:
            reason = exc.__cause__ or exc
            raise PassError(pass_.name, previous, _describe(reason)) from exc
        except SparcError as exc:
            raise PassError(pass_.name, previous, str(exc)) from exc
        except Exception as exc:
            raise PassError(pass_.name, previous, _describe(exc)) from exc

    def _outputs(self, model: ir.Model) -> list:
        """The model's outputs on the validation data; out of core, one block at a time."""
        if weight_store(model.graph) is not None:
            return staged_outputs(model, self.validation, threads=self.threads)
        return run_batches(model, self.validation, threads=self.threads)

    def _reference_outputs(self, model: ir.Model) -> list | None:
        """The original model's outputs on the validation data (None without data)."""
        if not self.validation:
            return None
        try:
            reference = self._outputs(model)
        except SparcError as exc:
            raise CalibrationError(f"the model does not run on the validation data: {exc}") from None
        _check_finite_reference(model, reference)
        return reference

    def _reference_feeds(self) -> Mapping[str, np.ndarray] | None:
        """The batch MACs are counted on: the first validation (else calibration) batch."""
        data = self.validation or self.calibration
        return data.batches[0] if data else None

    def _verify(self, pass_, model, reference, last, previous) -> tuple[OutputError | None, list | None]:
        """The error against the original outputs; a lossless pass is held to ``last``'s."""
        if reference is None:
            return None, None
        try:
            outputs = self._outputs(model)
        except SparcError as exc:
            raise PassError(pass_.name, previous, f"its output model does not run: {exc}") from exc
        _check_shapes(pass_, outputs, reference, previous)
        error = OutputError.between(outputs, reference, self.names, self.measures)
        infinite = [o.name for o in error.outputs if not o.finite]
        if infinite:
            raise PassError(pass_.name, previous, f"its output model produces NaN or Inf in {infinite}")
        if pass_.lossless:
            change = OutputError.between(outputs, last, self.names, self.measures)
            if change.exceeding(TOLERANCES["lossless"]):
                raise PassError(pass_.name, previous,
                                f"a lossless pass changed the outputs: {change.violations(TOLERANCES['lossless'])}")
        if pass_.max_error is not None and error.exceeding(pass_.max_error):
            raise PassError(pass_.name, previous,
                            f"output error exceeds max_error={pass_.max_error}: {error.violations(pass_.max_error)}")
        return error, outputs


def _check_finite_reference(model: ir.Model, reference: list | None) -> None:
    """A pass's error cannot be measured against outputs that are already NaN or Inf."""
    if reference is None:
        return
    names = [v.name for v in model.graph.outputs]
    for batch in reference:
        for name, array in zip(names, batch):
            if not np.isfinite(np.asarray(array, np.float64)).all():
                raise CalibrationError(
                    f"the model's output {name!r} is NaN or Inf on the validation data before any "
                    "pass ran; sparc cannot measure what a pass changes"
                )


def _check_shapes(pass_, outputs, reference, previous) -> None:
    if len(outputs[0]) != len(reference[0]):
        raise PassError(
            pass_.name,
            previous,
            f"the number of outputs changed from {len(reference[0])} to {len(outputs[0])}",
        )
    for got, want in zip(outputs[0], reference[0]):
        if np.shape(got) != np.shape(want):
            raise PassError(
                pass_.name,
                previous,
                f"output shape changed from {list(np.shape(want))} to {list(np.shape(got))}",
            )


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}"
