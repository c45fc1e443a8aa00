"""Streaming statistics of intermediate values: each ``update`` sees one batch (or part of one).

Additive reducers (sums over rows) give the same result whether a batch comes whole or in
parts, and whether batches are summed in one process or merged from several.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparc.data import Feeds


class Reducer:
    """Streaming statistic over one intermediate value; ``update`` sees one batch at a time.

    ``additive`` reducers (sums over rows) give the same result whether a batch comes whole
    or in parts along its sample axis, so :func:`collect` may split batches to bound memory.
    """

    additive = False

    def update(self, array: np.ndarray, feeds: Feeds) -> None:
        raise NotImplementedError

    def fresh(self) -> Reducer:
        """A reducer with the same options that has seen nothing (for a worker's share)."""
        raise NotImplementedError

    def merge(self, other: Reducer) -> Reducer:
        """Add what ``other`` (same options) saw to this one: the reducer of both inputs."""
        raise NotImplementedError

    @property
    def mergeable(self) -> bool:
        """Whether shares of the data may be reduced apart (in several workers) and merged."""
        return self.additive and type(self).merge is not Reducer.merge


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

    def fresh(self) -> Gram:
        return Gram(self.row_mask, center=self.center, normalize=self.normalize, axis=self.axis)

    def merge(self, other: Gram) -> Gram:
        """XᵀX of the stacked rows [X; Y] is XᵀX + YᵀY; row counts add."""
        _check_same(self, other, ("center", "normalize", "axis"))
        if other.matrix is not None:
            self.matrix = other.matrix.copy() if self.matrix is None else self.matrix + other.matrix
        self.rows += other.rows
        return self


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

    def fresh(self) -> ChannelStats:
        return ChannelStats(self.row_mask, axis=self.axis)

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Σx, Σ|x|, Σx² and the row count of both inputs: the sums add."""
        _check_same(self, other, ("axis",))
        if other.sum is not None:
            if self.sum is None:
                self.sum, self.abs_sum, self.sq_sum = other.sum.copy(), other.abs_sum.copy(), other.sq_sum.copy()
            else:
                self.sum += other.sum
                self.abs_sum += other.abs_sum
                self.sq_sum += other.sq_sum
        self.rows += other.rows
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.rows, 1)

    @property
    def l2(self) -> np.ndarray:
        """‖x_j‖₂ over all rows seen, per channel j."""
        return np.sqrt(self.sq_sum)


def _check_same(reducer: Reducer, other: Reducer, options: tuple[str, ...]) -> None:
    """Only reducers of one kind with the same options merge."""
    if type(other) is not type(reducer) or any(getattr(reducer, o) != getattr(other, o) for o in options):
        raise TypeError(f"cannot merge {type(other).__name__} into {type(reducer).__name__} "
                        f"with other options ({', '.join(options)})")


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
