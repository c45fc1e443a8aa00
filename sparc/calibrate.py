"""Calibration data, and streaming statistics of intermediate values over it.

:class:`CalibrationData` holds batches of model inputs (from Python iterables or an ``.npz``
file) checked against the model's inputs. :func:`collect` runs the current IR in ONNX Runtime
with the requested intermediate values exposed as graph outputs and feeds each batch's
arrays to reducers, so memory holds one batch of activations plus the running statistics,
however many batches there are.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparc.errors import CalibrationError

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
EXPOSED_BYTES = 256 * 2**20  # exposed values per calibration run (see collect)
MAX_SYNTHETIC_ELEMENTS = 2**28  # made-up inputs larger than this are a broken shape, not a size


class CalibrationData:
    """An ordered list of input batches, each a dict from model input name to array."""

    def __init__(self, batches: Sequence[Feeds]):
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Feeds]:
        return iter(self.batches)

    def split(self, holdout: int) -> tuple[CalibrationData, CalibrationData]:
        """The first ``len - holdout`` batches for calibration, the last ``holdout`` held out."""
        cut = len(self.batches) - holdout
        return CalibrationData(self.batches[:cut]), CalibrationData(self.batches[cut:])


def as_calibration(source, model: ir.Model, *, batch_size: int = 8) -> CalibrationData:
    """Turn ``source`` into checked :class:`CalibrationData` for ``model``.

    ``source`` is a :class:`CalibrationData`, an ``.npz`` path (arrays named after the model
    inputs, samples on axis 0, grouped into batches of ``batch_size``), or an iterable of
    batches, each a dict keyed by input name or a tuple in input order. numpy arrays, torch
    tensors and nested lists are accepted; integer and float inputs are cast within their kind.
    """
    names = [v.name for v in model.graph.inputs]
    if isinstance(source, CalibrationData):
        batches = source.batches
    elif isinstance(source, (str, os.PathLike)):
        batches = _npz_batches(Path(source), batch_size)
    elif isinstance(source, Mapping):
        batches = [source]
    elif isinstance(source, Iterable):
        batches = [_as_feeds(item, names, index) for index, item in enumerate(source)]
    else:
        raise CalibrationError(
            f"calibration data must be an .npz path or an iterable of input batches, "
            f"not {type(source).__name__}"
        )
    if not batches:
        raise CalibrationError("calibration data is empty")
    return CalibrationData([check_feeds(b, model, f"batch {i}") for i, b in enumerate(batches)])


def _npz_batches(path: Path, batch_size: int) -> list[Feeds]:
    if not path.is_file():
        raise CalibrationError(f"{path}: no such calibration file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise CalibrationError(f"{path}: not a readable .npz file ({exc})") from None
    if not arrays:
        raise CalibrationError(f"{path}: the archive holds no arrays")
    counts = {name: a.shape[0] if a.ndim else 0 for name, a in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise CalibrationError(
            f"{path}: every array needs the same number of samples on axis 0, got {counts}"
        )
    total = next(iter(counts.values()))
    return [
        {name: a[start : start + batch_size] for name, a in arrays.items()}
        for start in range(0, total, batch_size)
    ]


def _as_feeds(item, names: list[str], index: int) -> Feeds:
    if isinstance(item, Mapping):
        return {str(k): _to_numpy(v, f"batch {index} input {k!r}") for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        if len(item) != len(names):
            raise CalibrationError(
                f"batch {index} has {len(item)} positional inputs but the model takes "
                f"{len(names)}: {names}"
            )
        return {n: _to_numpy(v, f"batch {index} input {n!r}") for n, v in zip(names, item)}
    if len(names) == 1:
        return {names[0]: _to_numpy(item, f"batch {index}")}
    raise CalibrationError(
        f"batch {index} is a {type(item).__name__}; give a dict or a tuple of inputs {names}"
    )


def _to_numpy(value, label: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise CalibrationError(f"{label}: cannot be converted to an array ({exc})") from None
    if array.dtype == object:
        raise CalibrationError(f"{label}: ragged or non-numeric data")
    return array


def check_feeds(feeds: Mapping[str, np.ndarray], model: ir.Model, label: str) -> Feeds:
    """Check names, ranks, static dims and dtypes of ``feeds`` against the model's inputs.

    Returns the feeds cast to the exact input dtypes (within the same kind: integer to
    integer, float to float). Raises :class:`CalibrationError` naming every mismatch.
    """
    inputs = {v.name: v for v in model.graph.inputs}
    problems = []
    missing = [n for n in inputs if n not in feeds]
    unknown = [n for n in feeds if n not in inputs]
    if missing:
        problems.append(f"missing inputs {missing}")
    if unknown:
        problems.append(f"unknown inputs {unknown} (the model's inputs are {list(inputs)})")
    out: Feeds = {}
    for name, value in inputs.items():
        if name not in feeds:
            continue
        array = _to_numpy(feeds[name], f"{label} input {name!r}")
        problem, array = _fit_input(name, value, array)
        if problem:
            problems.append(problem)
        out[name] = array
    if problems:
        raise CalibrationError(f"{label} does not fit the model: " + "; ".join(problems))
    return out


def _fit_input(name: str, value: ir.Value, array: np.ndarray) -> tuple[str | None, np.ndarray]:
    if value.dtype is not None:
        want = value.dtype.numpy()
        if array.dtype != want:
            if np.dtype(want).kind != array.dtype.kind and not (
                np.dtype(want).kind in "iu" and array.dtype.kind in "iu"
            ):
                return f"input {name!r} has dtype {array.dtype}, the model wants {want}", array
            array = array.astype(want)
    if value.shape is not None:
        if array.ndim != len(value.shape):
            return (
                f"input {name!r} has shape {list(array.shape)}, the model wants rank "
                f"{len(value.shape)} ({_shape_text(value.shape)})",
                array,
            )
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int) and dim != array.shape[axis]:
                return (
                    f"input {name!r} has shape {list(array.shape)}, the model wants "
                    f"{_shape_text(value.shape)}",
                    array,
                )
    return None, array


def _shape_text(shape: ir.Shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else str(d.value) for d in shape) + "]"


def synthetic_feeds(
    model: ir.Model, dims: Mapping[str, int] | None = None, *, batch: int = 1, seq: int = 1
) -> Feeds:
    """Made-up inputs shaped by the model's input types.

    A symbolic dim takes its size from ``dims`` by name, else ``batch`` on axis 0 and ``seq``
    elsewhere. Integer inputs are ones (valid token ids and masks); float inputs are standard
    normal (seed 0). For shapes and timing only, never for calibration.
    """
    dims = dims or {}
    rng = np.random.default_rng(0)
    feeds: Feeds = {}
    for value in model.graph.inputs:
        if value.shape is None or value.dtype is None:
            raise CalibrationError(f"input {value.name!r} has no static type; give input data")
        shape = [
            d if isinstance(d, int) else dims.get(str(d.value), batch if axis == 0 else seq)
            for axis, d in enumerate(value.shape)
        ]
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_SYNTHETIC_ELEMENTS:
            raise CalibrationError(
                f"input {value.name!r} would be made up with shape {shape}: not a usable size "
                f"(limit {MAX_SYNTHETIC_ELEMENTS:,} elements); give real inputs or other dims"
            )
        dtype = value.dtype.numpy()
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.ones(shape, dtype=dtype)
    return feeds


def holdout_size(batches: int) -> int:
    """Batches held out for validation: a tenth of the data, at least 1, at most 4; 0 if < 2."""
    if batches < 2:
        return 0
    return max(1, min(4, batches // 10))


class Reducer:
    """Streaming statistic over one intermediate value; ``update`` sees one batch at a time.

    ``additive`` reducers (sums over rows) give the same result whether a batch comes whole
    or in parts along its sample axis, so :func:`collect` may split batches to bound memory.
    """

    additive = False

    def update(self, array: np.ndarray, feeds: Feeds) -> None:
        raise NotImplementedError


class Gram(Reducer):
    """Running XᵀX (float64) over rows x of the last axis (or ``axis``), and the row count.

    With ``row_mask`` (a function of the batch feeds returning a 0/1 array broadcastable to
    the leading axes, e.g. an attention mask), padded rows are left out. With ``center``
    each row becomes x − mean(x); with ``normalize`` each row becomes x / ‖x‖ (what a norm
    layer passes on), so every token weighs the same whatever its magnitude.
    """

    additive = True

    def __init__(
        self, row_mask=None, *, center: bool = False, normalize: bool = False, axis: int = -1
    ):
        self.row_mask = row_mask
        self.axis = axis
        self.center = center
        self.normalize = normalize
        self.matrix: np.ndarray | None = None
        self.rows = 0

    def update(self, array: np.ndarray, feeds: Feeds) -> None:
        if self.axis not in (-1, array.ndim - 1):
            array = np.moveaxis(array, self.axis, -1)
        rows = _masked_rows(array, feeds, self.row_mask)
        if self.center:
            rows -= rows.mean(axis=1, keepdims=True)
        if self.normalize:
            rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        gram = rows.T @ rows
        self.matrix = gram if self.matrix is None else self.matrix + gram
        self.rows += rows.shape[0]


class ChannelStats(Reducer):
    """Per-channel sums over rows: Σx, Σ|x|, Σx² (float64) and the row count.

    Channels lie on the last axis, or on ``axis`` (e.g. 1 for NCHW images).
    """

    additive = True

    def __init__(self, row_mask=None, *, axis: int = -1):
        self.row_mask = row_mask
        self.axis = axis
        self.sum: np.ndarray | None = None
        self.abs_sum: np.ndarray | None = None
        self.sq_sum: np.ndarray | None = None
        self.rows = 0

    def update(self, array: np.ndarray, feeds: Feeds) -> None:
        if self.axis not in (-1, array.ndim - 1):
            array = np.moveaxis(array, self.axis, -1)
        rows = _masked_rows(array, feeds, self.row_mask)
        parts = (rows.sum(0), np.abs(rows).sum(0), np.square(rows).sum(0))
        if self.sum is None:
            self.sum, self.abs_sum, self.sq_sum = parts
        else:
            self.sum += parts[0]
            self.abs_sum += parts[1]
            self.sq_sum += parts[2]
        self.rows += rows.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.rows, 1)

    @property
    def l2(self) -> np.ndarray:
        """‖x_j‖₂ over all rows seen, per channel j."""
        return np.sqrt(self.sq_sum)


def token_mask(model: ir.Model, name: str = "attention_mask"):
    """A row mask reading the model input ``name`` (padding masks), or None if there is none."""
    if not any(v.name == name for v in model.graph.inputs):
        return None
    return lambda feeds: feeds[name]


def _masked_rows(array: np.ndarray, feeds: Feeds, row_mask) -> np.ndarray:
    rows = array.reshape(-1, array.shape[-1]).astype(np.float64)
    if row_mask is None:
        return rows
    mask = np.broadcast_to(np.asarray(row_mask(feeds)), array.shape[:-1]).reshape(-1)
    return rows[mask.astype(bool)]


class _Clock:
    """Seconds this process spent in sessions that expose values for calibration."""

    seconds = 0.0


def calibration_seconds() -> float:
    """Seconds spent building and running :func:`exposing_runner` sessions in this process so
    far; a pass's calibration time is the difference across it."""
    return _Clock.seconds


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
    from sparc.backends.onnxruntime import OrtRunner

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

    Memory holds one run's exposed values: when every reducer is additive, each batch runs
    in parts along the sample axis, sized after the first sample so that a part's exposed
    values stay under ``EXPOSED_BYTES`` (at least one sample). The session runs without
    ONNX Runtime's memory arena, so activations are returned between runs. Values that are
    initializers are not run: reducers of constants make no sense.
    """
    targets = {name: r if isinstance(r, Sequence) else (r,) for name, r in reducers.items()}
    splittable = all(getattr(r, "additive", False) for group in targets.values() for r in group)
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
    from sparc.backends.onnxruntime import OrtRunner

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
