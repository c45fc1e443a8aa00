"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with optimal weight reconstruction.

For W[out, in] and the layer Hessian H = XᵀX/rows of its inputs, inputs are visited left to
right in blocks of ``blocksize`` columns. The OBS updates of earlier columns reach a block
when it is visited, as one product E[:, :start]·U[:start, block] of all earlier errors E
(one tall product per block instead of rewriting every later column after each block). Within a block the mask is chosen from the saliency
w² / [H⁻¹]ᵢᵢ² (per tile for block patterns, per group of m for n:m, per block of columns for
unstructured), and each pruned or kept column's error is spread over the not yet visited
columns through the Cholesky factor of H⁻¹ (the OBS update), so the layer output changes as
little as possible.

Robustness: inputs that never fire (zero diagonal) are pruned outright; damping
λ·mean(diag H) is added, and when the Cholesky factorization still fails (a rank-deficient or
badly scaled H) λ is multiplied by 10 until it succeeds. The damping used is returned so the
report can say so; this never fails on a real model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from sparc.algorithms.sparsity import Pattern, expand_tiles, select_mask, tile_sums
from sparc.errors import SparcError

MAX_DAMPING_STEPS = 12
INNER_COLUMNS = 16


@dataclasses.dataclass
class Factor:
    """What SparseGPT needs of a Hessian: U with H⁻¹ = UᵀU, dead inputs, the damping used."""

    upper: np.ndarray
    dead: np.ndarray
    damping: float
    retries: int


def factor(hessian: np.ndarray, damping: float = 0.01, *, overwrite: bool = False,
           precision: str = "float64") -> Factor:
    """Factor the input Hessian once; layers reading the same input share it. ``overwrite``: a
    ``hessian`` of the ``precision`` is used as working memory (the large Hessians of wide
    layers). ``precision`` float32 halves the memory and about halves the time of the factor
    and of :func:`prune` (what the reference implementation computes in)."""
    dtype = np.dtype(precision)
    if not (overwrite and hessian.dtype == dtype and hessian.flags.c_contiguous):
        hessian = hessian.astype(dtype)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    upper, used, retries = _inverse_cholesky(hessian, damping)
    return Factor(upper, dead, used, retries)


def prune(weight_oi: np.ndarray, hessian: Factor, pattern: Pattern, *, blocksize: int = 128) -> np.ndarray:
    """``weight_oi`` pruned to ``pattern`` by SparseGPT with the factored input Hessian."""
    weight = weight_oi.astype(hessian.upper.dtype)  # always a copy (astype copies)
    columns = weight.shape[1]
    blocksize = _aligned_blocksize(blocksize, pattern)
    weight[:, hessian.dead] = 0.0
    upper = hessian.upper
    mask = np.zeros(weight.shape, bool)
    errors = np.zeros_like(weight)
    for start in range(0, columns, blocksize):
        stop = min(start + blocksize, columns)
        block = weight[:, start:stop] - errors[:, :start] @ upper[:start, start:stop]
        inverse = upper[start:stop, start:stop]
        saliency = block**2 / np.diag(inverse)[None, :] ** 2
        block_mask = None if pattern.kind == "nm" else _block_mask(saliency, pattern)
        step = _inner_step(pattern)
        for inner in range(0, stop - start, step):
            end = min(inner + step, stop - start)
            for i in range(inner, end):
                if pattern.kind == "nm" and i % pattern.m == 0:
                    group = select_mask(
                        (block[:, i : i + pattern.m] ** 2) / np.diag(inverse)[i : i + pattern.m] ** 2,
                        Pattern("nm", pattern.density, pattern.n, pattern.m),
                    )
                    mask[:, start + i : start + i + group.shape[1]] = group
                keep = mask[:, start + i] if block_mask is None else block_mask[:, i]
                column = block[:, i]
                quantized = np.where(keep, column, 0.0)
                error = (column - quantized) / inverse[i, i]
                block[:, i:end] -= np.outer(error, inverse[i, i:end])
                block[:, i] = quantized
                errors[:, start + i] = error
            block[:, end:] -= errors[:, start + inner : start + end] @ inverse[inner:end, end:]
        if block_mask is not None:
            mask[:, start:stop] = block_mask
        weight[:, start:stop] = block
    weight[~mask] = 0.0
    return weight


def _inner_step(pattern: Pattern) -> int:
    """Columns updated one by one before their errors reach the rest of the block in one
    product (a second level of the lazy batch update; whole n:m groups)."""
    return pattern.m * max(1, INNER_COLUMNS // pattern.m) if pattern.kind == "nm" else INNER_COLUMNS


def _upper_factor_of_inverse(hessian: np.ndarray) -> np.ndarray | None:
    """U upper triangular with H⁻¹ = UᵀU (None when H is not positive definite).

    With P the order reversal and L = chol(PHP) lower, U = P·L⁻¹·P: P·L⁻¹·P is upper, and
    UᵀU = P·L⁻ᵀL⁻¹·P = P·(PHP)⁻¹·P = H⁻¹. One Cholesky and one triangular inverse, no
    explicit H⁻¹; U is H⁻¹'s unique Cholesky factor (positive diagonal).
    """
    try:
        lower = scipy.linalg.cholesky(hessian[::-1, ::-1], lower=True)
    except np.linalg.LinAlgError:
        return None
    trtri = scipy.linalg.get_lapack_funcs("trtri", (lower,))
    inverse, info = trtri(lower, lower=1, overwrite_c=1)
    if info != 0 or not np.all(np.isfinite(inverse)):
        return None
    del lower
    return np.ascontiguousarray(inverse[::-1, ::-1])


def _aligned_blocksize(blocksize: int, pattern: Pattern) -> int:
    """Column blocks hold whole n:m groups or whole tiles."""
    step = pattern.m if pattern.kind == "nm" else (pattern.block[1] if pattern.kind == "block" else 1)
    return max(step, (blocksize // step) * step)


def _block_mask(saliency: np.ndarray, pattern: Pattern) -> np.ndarray:
    """Keep-mask for one column block: the most salient entries (or tiles) at ``density``."""
    if pattern.kind == "block":
        tiles = tile_sums(saliency, pattern.block)
        flat = tiles.reshape(-1)
        keep = np.zeros(flat.shape, bool)
        count = int(round(pattern.density * flat.size))
        keep[np.argsort(-flat, kind="stable")[:count]] = True
        return expand_tiles(keep.reshape(tiles.shape), pattern.block, saliency.shape)
    return select_mask(saliency, pattern)


def _inverse_cholesky(hessian: np.ndarray, damping: float) -> tuple[np.ndarray, float, int]:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), raising the damping until it exists; the
    damping goes onto ``hessian``'s diagonal in place."""
    diagonal = np.diag(hessian).copy()
    scale = float(np.mean(diagonal))
    current = damping
    for retry in range(MAX_DAMPING_STEPS):
        np.fill_diagonal(hessian, diagonal + current * scale)
        upper = _upper_factor_of_inverse(hessian)
        if upper is not None:
            return upper, current, retry
        current = current * 10 if current > 0 else 1e-6
    raise SparcError(f"SparseGPT: the Hessian stays singular even with damping {current:g}")
