"""How values entering a run of transformer blocks depend on the sequence length.

Routing tokens means running blocks on k of the n tokens, so every value the blocks read
from outside must be cut to the kept tokens. Exporters compute such values in many ways
(attention masks [b, 1, n, n], rotary tables [1, n, d], shape tensors [b, n, h, d] for Reshape),
so the analysis does not guess from names or symbolic dims: it runs the model at two sequence
lengths and compares. A value is
- gathered along its *sequence axes*: the axes whose size is n in both runs (n₁ ≠ n₂);
  axis 0 must then be the batch axis (size b, or 1 when broadcast over the batch);
- *sliced* to its first k positions along its sequence axes when it has no batch axis but
  does not depend on which tokens are kept, only on their order: a causal mask (constant on
  and below the diagonal, constant above) or a value constant along those axes;
- patched at its *length positions*: a 0-d or 1-d integer value (a shape) whose elements at
  those positions equal n in both runs (other elements must not change);
- left alone when neither its shape nor (for integers) its contents change.
Anything else (a length-dependent value of another form) raises :class:`StructureError`.
A gathered value whose last axis (or last two) are sequence axes is classified as a mask
when its values say so: boolean, additive (0 / large negative) or multiplicative (0 / 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sparc.errors import StructureError

ADDITIVE_MASK_FLOOR = -1000.0


@dataclasses.dataclass
class SequenceValue:
    """A value that depends on the sequence length, and how."""

    value: ir.Value
    rank: int
    size: int
    dtype: np.dtype
    seq_axes: tuple[int, ...] = ()
    batch_broadcast: bool = False
    slice_only: bool = False
    length_positions: tuple[int, ...] = ()
    mask: str | None = None  # "bool", "additive" or "multiplicative"


def input_sequence_axes(inputs: Sequence[ir.Value], feeds: Mapping[str, np.ndarray], length: int) -> dict[str, list[int]]:
    """For each graph input, its axes (after the batch axis) of size ``length`` in ``feeds``."""
    axes = {}
    for value in inputs:
        shape = np.shape(feeds[value.name])
        found = [a for a in range(1, len(shape)) if shape[a] == length]
        if found:
            axes[value.name] = found
    return axes


def truncated(feeds: Mapping[str, np.ndarray], axes: Mapping[str, list[int]], length: int) -> dict[str, np.ndarray]:
    """``feeds`` cut to the first ``length`` positions along each input's sequence axes."""
    out = dict(feeds)
    for name, input_axes in axes.items():
        array = out[name]
        for axis in input_axes:
            array = np.take(array, np.arange(length), axis=axis)
        out[name] = array
    return out


def classify(
    values: Sequence[ir.Value],
    runs: Sequence[Mapping[str, np.ndarray]],
    lengths: tuple[int, int],
    batch: int,
) -> list[SequenceValue]:
    """Classify ``values`` from their arrays in two runs at sequence ``lengths`` (docstring)."""
    if lengths[0] == lengths[1]:
        raise StructureError(
            f"the probe runs gave the same token count ({lengths[0]}) at both lengths; "
            "use longer calibration sequences"
        )
    found = []
    for value in values:
        first, second = (np.asarray(run[value.name]) for run in runs)
        item = _classify_one(value, first, second, lengths, batch)
        if item is not None:
            found.append(item)
    return found


def _classify_one(value, first, second, lengths, batch) -> SequenceValue | None:
    n1, n2 = lengths
    if first.ndim != second.ndim:
        raise StructureError(f"value {value.name!r} changes rank with the sequence length")
    seq_axes = tuple(a for a in range(first.ndim) if first.shape[a] == n1 and second.shape[a] == n2)
    other_changed = [a for a in range(first.ndim) if a not in seq_axes and first.shape[a] != second.shape[a]]
    if other_changed:
        raise StructureError(
            f"value {value.name!r} changes shape {list(first.shape)} → {list(second.shape)} "
            "in a way that is not a sequence axis; the blocks cannot be routed"
        )
    if seq_axes:
        if 0 in seq_axes and _order_invariant(first, seq_axes):
            return SequenceValue(value, first.ndim, first.size, first.dtype, seq_axes, slice_only=True)
        if 0 in seq_axes or first.shape[0] not in (1, batch):
            raise StructureError(
                f"value {value.name!r} {list(first.shape)} has a sequence axis but no leading "
                "batch axis; tokens cannot be gathered per row"
            )
        mask = _mask_kind(first, seq_axes)
        broadcast = first.shape[0] == 1 and batch > 1
        return SequenceValue(value, first.ndim, first.size, first.dtype, seq_axes, broadcast, mask=mask)
    if first.dtype.kind in "iu" and first.ndim <= 1 and first.shape == second.shape:
        a, b = first.reshape(-1), second.reshape(-1)
        positions = tuple(int(i) for i in np.flatnonzero((a == n1) & (b == n2)))
        changed = [int(i) for i in np.flatnonzero(a != b) if int(i) not in positions]
        if changed:
            raise StructureError(
                f"shape value {value.name!r} ({a.tolist()} at length {n1}, {b.tolist()} at {n2}) "
                "depends on the sequence length other than by holding it"
            )
        if not positions:
            return None
        return SequenceValue(value, first.ndim, first.size, first.dtype, length_positions=positions)
    if first.dtype.kind in "iu" and not np.array_equal(first, second):
        raise StructureError(f"integer value {value.name!r} depends on the sequence length")
    return None


def _order_invariant(array: np.ndarray, seq_axes: tuple[int, ...]) -> bool:
    """The values along the sequence axes depend only on token order (causal or constant)."""
    rank = array.ndim
    if seq_axes == (rank - 1,):
        return bool(np.all(array == array[..., :1]))
    if seq_axes != (rank - 2, rank - 1):
        return False
    n = array.shape[-1]
    flat = array.reshape(-1, n, n)
    lower = np.tril(np.ones((n, n), bool))
    return all(
        np.all(square[lower] == square[0, 0]) and np.all(square[~lower] == square[0, -1])
        for square in flat
    )


def _mask_kind(array: np.ndarray, seq_axes: tuple[int, ...]) -> str | None:
    rank = array.ndim
    if seq_axes not in ((rank - 1,), (rank - 2, rank - 1)):
        return None
    if array.dtype == bool:
        return "bool"
    if array.dtype.kind != "f" or array.size == 0:
        return None
    finite = array[np.isfinite(array)]
    if np.all(finite <= 0) and (np.nanmin(array) < ADDITIVE_MASK_FLOOR or not np.any(array)):
        return "additive"  # an all-zero mask attends everywhere: additive, not multiplicative
    if np.all(np.isin(array, (0.0, 1.0))):
        return "multiplicative"
    return None
