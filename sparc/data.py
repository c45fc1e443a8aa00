"""Calibration data: batches of model inputs, from Python iterables or an ``.npz`` file,
checked against the model's inputs (names, ranks, static dims, dtype kind), and made-up
inputs for shape probes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparc.capture.kv_cache import complete_feeds, find_kv_cache
from sparc.errors import CalibrationError

Feeds = dict[str, np.ndarray]
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
    integer, float to float). A decoder with a KV cache gets what a prompt leaves out (empty
    pasts, position ids: ``sparc.capture.kv_cache.complete_feeds``). Raises
    :class:`CalibrationError` naming every mismatch.
    """
    inputs = {v.name: v for v in model.graph.inputs}
    kv = find_kv_cache(model)
    if kv is not None:
        feeds = complete_feeds({k: _to_numpy(v, f"{label} input {k!r}") for k, v in feeds.items()}, model, kv)
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


def feed_shapes(feeds: Mapping[str, np.ndarray]) -> str:
    """``name[shape], ...`` of a batch of inputs, as reports name what was run."""
    return ", ".join(f"{k}{list(np.asarray(v).shape)}" for k, v in feeds.items())
