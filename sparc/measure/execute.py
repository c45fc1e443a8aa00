"""Running a model over calibration data with chosen intermediate values exposed.

:func:`collect` runs the current IR in ONNX Runtime with the requested values exposed as
graph outputs and feeds each batch's arrays to reducers (:mod:`sparc.measure.reducers`), so
memory holds one batch of activations plus the running statistics, however many batches
there are. On an engine of several workers (:mod:`sparc.distributed`), the batches are dealt
round-robin to the workers, each reduces its share into fresh reducers, and the shares are
merged in worker order. :func:`run_batches` returns a model's outputs batch by batch.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sparc.data import CalibrationData, Feeds
from sparc.distributed import Engine, Shard
from sparc.errors import CalibrationError
from sparc.ir_utils import PROTOBUF_LIMIT, weight_bytes, weight_store
from sparc.measure.reducers import Reducer
from sparc.runtime import OrtRunner, serialized

logger = logging.getLogger(__name__)

EXPOSED_BYTES = 256 * 2**20  # exposed values per calibration run (see collect)


class _Clock:
    """Seconds this process spent in sessions that expose values for calibration."""

    seconds = 0.0


def calibration_seconds() -> float:
    """Seconds spent building and running :func:`exposing_runner` sessions in this process so
    far (and waiting for workers calibrating on an engine); a pass's calibration time is the
    difference across it."""
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
    start = time.perf_counter()
    try:
        return _TimedRunner(_exposed(model, names, lambda m: OrtRunner(m, threads=threads, arena=arena)))
    finally:
        _Clock.seconds += time.perf_counter() - start


def _exposed(model: ir.Model, names: Sequence[str], build):
    """``build(model)`` while the graph outputs are exactly the values ``names`` (restored after)."""
    values = _values_by_name(model)
    missing = [n for n in names if n not in values]
    if missing:
        raise CalibrationError(f"cannot expose unknown values {missing}")
    saved = list(model.graph.outputs)
    model.graph.sort()
    model.graph.outputs.clear()
    model.graph.outputs.extend(values[name] for name in names)
    try:
        return build(model)
    finally:
        model.graph.outputs.clear()
        model.graph.outputs.extend(saved)


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
    engine: Engine | None = None,
) -> None:
    """Run ``model`` over ``data`` and stream each named value into its reducer(s).

    Memory holds one run's exposed values: when every reducer is additive and the model
    takes any batch size, each batch runs in parts along the sample axis, sized after the
    first sample so that a part's exposed values stay under ``EXPOSED_BYTES`` (at least one
    sample); a model with a fixed batch size (captured without a dynamic batch axis) runs
    whole batches, the only size ONNX Runtime accepts. The session runs without ONNX
    Runtime's memory arena, so activations are returned between runs. Values that are
    initializers are not run: reducers of constants make no sense.

    With an ``engine`` of k > 1 workers and reducers that merge, worker j reduces batches j,
    j + k, … (in that order, ``threads`` intra-op threads each, default 1) into fresh reducers,
    merged into ``reducers`` in worker order: the same sums as one process, added in another
    order (float64). Otherwise, or for a model out of core or over protobuf's 2 GB, it runs here.
    """
    targets = {name: r if isinstance(r, Sequence) else (r,) for name, r in reducers.items()}
    additive = all(getattr(r, "additive", False) for group in targets.values() for r in group)
    splittable = additive and _any_batch_size(model)
    if _shardable(model, targets, data, engine):
        _collect_sharded(model, targets, data, engine, splittable, threads or 1, description)
        return
    runner = exposing_runner(model, list(targets), threads=threads, arena=False)
    _stream(runner, targets, _progress(data, description), splittable, description)


def _shardable(model: ir.Model, targets, data: CalibrationData, engine: Engine | None) -> bool:
    """Whether ``collect`` runs on the engine's workers (its docstring says when)."""
    if engine is None or engine.workers < 2 or len(data) < 2:
        return False
    if not all(getattr(r, "mergeable", False) for group in targets.values() for r in group):
        logger.info("calibration runs in this process: a reducer cannot be merged across workers")
        return False
    if weight_store(model.graph) is not None or weight_bytes(model) >= PROTOBUF_LIMIT - 2**26:
        logger.warning("calibration runs in this process: workers receive the model serialized, and it is "
                       "out of core or over protobuf's 2 GB")
        return False
    return True


def _stream(runner, targets, batches: Iterable[Feeds], splittable: bool, description: str) -> None:
    """Feed every batch (in parts when ``splittable``: see :func:`collect`) to the reducers."""
    per_sample = None
    for feeds in batches:
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


def _collect_sharded(model, targets, data, engine: Engine, splittable: bool, threads: int, description: str) -> None:
    """:func:`collect` on the engine's workers: the exposing model goes to them once, as the
    ONNX bytes a session loads."""
    start = time.perf_counter()
    payload = _exposed(model, list(targets), serialized)
    fresh = {name: [r.fresh() for r in group] for name, group in targets.items()}
    logger.info("%s: %d batches on %d workers", description, len(data), engine.workers)
    with engine.shards(data.batches) as shards:
        parts = shards.map(_collect_shard, payload, fresh, splittable, threads, description)
    for part in parts:
        for name, group in targets.items():
            for reducer, share in zip(group, part[name]):
                reducer.merge(share)
    count_calibration_seconds(time.perf_counter() - start)


def _collect_shard(shard: Shard, payload: bytes, fresh, splittable: bool, threads: int, description: str):
    """On a worker: its batches reduced into copies of the ``fresh`` reducers, returned."""
    targets = copy.deepcopy(fresh)
    runner = _TimedRunner(OrtRunner(payload, threads=threads, arena=False))
    _stream(runner, targets, shard.items, splittable, description)
    return targets


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
