"""Magnitude quantiles of a value, streamed: a histogram of |x| on float32's own log scale.

Quantiles are not additive over batches; counts are. :class:`MagnitudeHistogram` counts |x| in
bins given by the top 17 bits of its float32 pattern (sign dropped: 8 exponent bits and 8
mantissa bits), so each power of two is split into 256 equal bins (a bin is at most 0.4% of its
value wide) and every float32, zero, subnormals and Inf included, has its bin. Histograms of the
parts of the data add up to the histogram of the whole: calibration streams batch by batch
and may split batches. Inside a bin, values are taken as spread uniformly.
"""

from __future__ import annotations

import numpy as np

from sparc.data import Feeds
from sparc.measure.reducers import Reducer

SHIFT = 15  # float32 bits dropped below the bin: 23 mantissa bits − 8 kept
BINS = 1 << (31 - SHIFT)  # the sign bit is cleared


class MagnitudeHistogram(Reducer):
    """Counts of |x| per bin (module docstring) over rows of the last axis; with ``row_mask`` (a
    function of the batch feeds returning a 0/1 array over the leading axes, e.g. an attention
    mask) padded rows are left out."""

    additive = True

    def __init__(self, row_mask=None):
        self.row_mask = row_mask
        self.counts = np.zeros(BINS, np.int64)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def update(self, array: np.ndarray, feeds: Feeds) -> None:
        values = np.ascontiguousarray(array, np.float32)
        if self.row_mask is not None:
            mask = np.broadcast_to(np.asarray(self.row_mask(feeds)), values.shape[:-1]).astype(bool)
            values = values[mask]
        bins = (values.view(np.uint32) & np.uint32(0x7FFFFFFF)) >> np.uint32(SHIFT)
        self.counts += np.bincount(bins.ravel(), minlength=BINS)

    def fresh(self) -> MagnitudeHistogram:
        return MagnitudeHistogram(self.row_mask)

    def merge(self, other: MagnitudeHistogram) -> MagnitudeHistogram:
        """The histogram of both inputs: counts add per bin (exactly: integers)."""
        if not isinstance(other, MagnitudeHistogram):
            raise TypeError(f"cannot merge {type(other).__name__} into MagnitudeHistogram")
        self.counts += other.counts
        return self

    def threshold(self, fraction: float) -> float:
        """The t for which a ``fraction`` of the counted entries have |x| < t (0 for 0)."""
        total = self.total
        if fraction <= 0 or total == 0:
            return 0.0
        target = fraction * total
        cumulative = np.cumsum(self.counts)
        b = int(np.searchsorted(cumulative, target, side="left"))
        below = cumulative[b] - self.counts[b]
        low, high = _edges(b)
        return float(low + (target - below) / self.counts[b] * (high - low))

    def fraction_below(self, threshold: float) -> float:
        """The fraction of the counted entries with |x| < ``threshold``."""
        total = self.total
        if total == 0 or threshold <= 0:
            return 0.0
        b = int(np.array(threshold, np.float32).view(np.uint32) >> SHIFT)
        low, high = _edges(b)
        inside = self.counts[b] * min(1.0, (threshold - low) / (high - low))
        return float((self.counts[:b].sum() + inside) / total)


def _edges(b: int) -> tuple[float, float]:
    """The magnitudes where bin ``b`` starts and ends."""
    bits = np.array([b << SHIFT, (b + 1) << SHIFT], np.uint32)
    low, high = bits.view(np.float32).astype(np.float64)
    return float(low), float(high)
