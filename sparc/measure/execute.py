"""Running a model over calibration data with chosen intermediate values exposed.

:func:`collect` runs the current IR in ONNX Runtime with the requested values exposed as
graph outputs and feeds each batch's arrays to reducers (:mod:`sparc.measure.reducers`), so
memory holds one batch of activations plus the running statistics, however many batches
there are. :func:`run_batches` returns a model's outputs batch by batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sparc.data import CalibrationData, Feeds
from sparc.errors import CalibrationError
from sparc.measure.reducers import Reducer
from sparc.runtime import OrtRunner

EXPOSED_BYTES = 256 * 2**20  # exposed values per calibration run (see collect)


class _Clock:
    """Seconds this process spent in sessions that expose values for calibration."""

    seconds = 0.0


def calibration_seconds() -> float:
    """Seconds spent building and running :func:`exposing_runner` sessions in this process so
    far; a pass's calibration time is the difference across it."""
    return _Clock.seconds


def count_calibration_seconds(seconds: float) -> None:
    """Add ``seconds`` spent running models for calibration outside :func:`exposing_runner`
    (e.g. a staged run) to :func:`calibration_seconds`."""
    _Clock.seconds += seconds


class _TimedRunner:
    """A runner whose run time counts towards :func:`calibration_seconds`."""

    def __init__(self, runner):
        self._runner = runner

    def run(self, feeds):
        start = time.perf_counter()
        try:
            return self._runner.run(feeds)
        finally:
            _Clock.seconds += time.perf_counter() - start


def exposing_runner(model: ir.Model, names: Sequence[str], *, threads: int | None = None, arena: bool = True):
    """An ONNX Runtime session of ``model`` whose outputs are exactly the values ``names``
    (``arena=False``: without ONNX Runtime's CPU memory arena), timed as calibration.

    The graph outputs are swapped for the session and restored (the nodes are left in
    topological order), so no copy of the model, weights included, is made.
    """
    values = _values_by_name(model)
    missing = [n for n in names if n not in values]
    if missing:
        raise CalibrationError(f"cannot expose unknown values {missing}")
    saved = list(model.graph.outputs)
    start = time.perf_counter()
    model.graph.sort()
    model.graph.outputs.clear()
    model.graph.outputs.extend(values[name] for name in names)
    try:
        return _TimedRunner(OrtRunner(model, threads=threads, arena=arena))
    finally:
        model.graph.outputs.clear()
        model.graph.outputs.extend(saved)
        _Clock.seconds += time.perf_counter() - start


def _values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    values = {v.name: v for v in model.graph.inputs}
    values.update(model.graph.initializers)
    for node in model.graph:
        for out in node.outputs:
            values[out.name] = out
    return values


def collect(
    model: ir.Model,
    reducers: Mapping[str, Reducer | Sequence[Reducer]],
    data: CalibrationData,
    *,
    threads: int | None = None,
    description: str = "calibrating",
) -> None:
    """Run ``model`` over ``data`` and stream each named value into its reducer(s).

    Memory holds one run's exposed values: when every reducer is additive and the model
    takes any batch size, each batch runs in parts along the sample axis, sized after the
    first sample so that a part's exposed values stay under ``EXPOSED_BYTES`` (at least one
    sample); a model with a fixed batch size (captured without a dynamic batch axis) runs
    whole batches, the only size ONNX Runtime accepts. The session runs without ONNX
    Runtime's memory arena, so activations are returned between runs. Values that are
    initializers are not run: reducers of constants make no sense.
    """
    targets = {name: r if isinstance(r, Sequence) else (r,) for name, r in reducers.items()}
    additive = all(getattr(r, "additive", False) for group in targets.values() for r in group)
    splittable = additive and _any_batch_size(model)
    runner = exposing_runner(model, list(targets), threads=threads, arena=False)
    per_sample = None
    for feeds in _progress(data, description):
        samples = _samples(feeds) if splittable else None
        if samples is None:
            _update(runner, targets, feeds, description)
            continue
        start = 0
        while start < samples:
            size = 1 if per_sample is None else max(1, EXPOSED_BYTES // per_sample)
            exposed = _update(runner, targets, {k: v[start : start + size] for k, v in feeds.items()}, description)
            per_sample = per_sample or max(1, exposed // size)
            start += size


def _any_batch_size(model: ir.Model) -> bool:
    """Whether no graph input fixes its size on axis 0, so a batch may run in parts."""
    return not any(
        v.shape is not None and len(v.shape) > 0 and isinstance(v.shape[0], int) for v in model.graph.inputs
    )


def _update(runner, targets: Mapping[str, Sequence[Reducer]], feeds: Feeds, description: str) -> int:
    """Run one batch (or part), feed every reducer; return the bytes the run exposed."""
    try:
        arrays = runner.run(feeds)
    except Exception as exc:
        raise CalibrationError(f"{description}: running the model failed: {exc}") from None
    for name, reducers in targets.items():
        for reducer in reducers:
            reducer.update(arrays[name], feeds)
    return sum(a.nbytes for a in arrays.values())


def _samples(feeds: Feeds) -> int | None:
    """The common sample count (axis 0) of every input, or None if they do not share one."""
    counts = {np.shape(v)[0] if np.ndim(v) else None for v in feeds.values()}
    if len(counts) != 1 or None in counts:
        return None
    return counts.pop()


def run_batches(model: ir.Model, data: CalibrationData, *, threads: int | None = None) -> list:
    """Outputs of ``model`` for every batch, as lists of arrays in graph-output order."""
    runner = OrtRunner(model, threads=threads)
    names = [v.name for v in model.graph.outputs]
    results = []
    for feeds in data:
        arrays = runner.run(feeds)
        results.append([arrays[n] for n in names])
    return results


def _progress(data: CalibrationData, description: str):
    """Iterate ``data`` with a progress bar on an interactive terminal for long runs."""
    if len(data) < 8 or not sys.stderr.isatty():
        yield from data
        return
    from rich.progress import track

    yield from track(data, description=description, total=len(data), transient=True)
