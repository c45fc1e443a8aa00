"""Outlier-weighted layer densities (OWL, Yin et al. 2024): keep more of the layers with outliers.

A layer's outlier ratio is D_l = fraction of entries with A_ij > M·mean(A), A_ij = |W_ij|·‖X_j‖₂
(the Wanda score, X_j the j-th input feature over the calibration rows). Layer densities are
D_l mapped linearly onto [d − λ, d + λ] (most outliers → d + λ), then shifted so that their mean
weighted by each layer's parameter count is d (the model keeps the same number of weights as at
a uniform d), and clipped to [``FLOOR``, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOOR = 0.01


def outlier_ratio(weight_kn: np.ndarray, input_l2: np.ndarray, threshold: float) -> float:
    """D_l of a weight W[in, out] whose input features have norms ``input_l2`` [in]."""
    scores = np.abs(weight_kn) * input_l2[:, None]
    return float(np.mean(scores > threshold * scores.mean()))


def allocate(ratios: Sequence[float], sizes: Sequence[int], density: float, spread: float) -> list[float]:
    """Per-layer densities from outlier ratios (module docstring); uniform when all ratios tie."""
    ratios, sizes = np.asarray(ratios, float), np.asarray(sizes, float)
    span = ratios.max() - ratios.min()
    position = (ratios - ratios.min()) / span if span > 0 else np.full_like(ratios, 0.5)
    values = density - spread + 2 * spread * position
    values += density - np.average(values, weights=sizes)
    return [float(v) for v in np.clip(values, FLOOR, 1.0)]
