"""Compressed weight formats of ``ai.sparc`` ops, for W[out, in] (rows are output features).

- CSR: ``values[nnz]``, ``indices[nnz]`` (column of each value), ``indptr[out + 1]``.
  Indices use the narrowest integer type that holds them (uint16 below 65,536 columns), so
  CSR is smaller than the dense weight below about 2/3 density for float32.
- BSR with (br, bc) blocks: ``values[nnzb, br, bc]``, ``indices[nnzb]`` (block column),
  ``indptr[out/br + 1]``; W is zero-padded to whole blocks, the logical shape kept aside.
- N:M: ``values[out, groups·n]`` and ``indices[out, groups·n]`` (uint8 position of each value
  inside its group of m inputs); the inputs are zero-padded to whole groups. Groups with fewer
  than n non-zeros store explicit zeros.
Every ``compress_*`` has an exact inverse ``decompress_*``.
"""

from __future__ import annotations

import math

import numpy as np

from sparc.errors import SparcError


def compress_csr(weight: np.ndarray) -> dict[str, np.ndarray]:
    rows, cols = np.nonzero(weight)
    indptr = np.zeros(weight.shape[0] + 1, np.int64)
    np.add.at(indptr, rows + 1, 1)
    return {
        "values": weight[rows, cols],
        "indices": cols.astype(index_type(weight.shape[1])),
        "indptr": np.cumsum(indptr).astype(index_type(len(rows))),
    }


def decompress_csr(values, indices, indptr, shape) -> np.ndarray:
    weight = np.zeros(shape, values.dtype)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr.astype(np.int64)))
    weight[rows, indices.astype(np.int64)] = values
    return weight


def compress_bsr(weight: np.ndarray, block: tuple[int, int]) -> dict[str, np.ndarray]:
    br, bc = block
    padded = _pad(weight, br, bc)
    tiles = padded.reshape(padded.shape[0] // br, br, padded.shape[1] // bc, bc).transpose(0, 2, 1, 3)
    kept = np.any(tiles != 0, axis=(2, 3))
    block_rows, block_cols = np.nonzero(kept)
    indptr = np.zeros(kept.shape[0] + 1, np.int64)
    np.add.at(indptr, block_rows + 1, 1)
    return {
        "values": np.ascontiguousarray(tiles[block_rows, block_cols]),
        "indices": block_cols.astype(index_type(kept.shape[1])),
        "indptr": np.cumsum(indptr).astype(index_type(len(block_rows))),
    }


def decompress_bsr(values, indices, indptr, shape, block) -> np.ndarray:
    br, bc = block
    rows, cols = math.ceil(shape[0] / br), math.ceil(shape[1] / bc)
    tiles = np.zeros((rows, cols, br, bc), values.dtype)
    block_rows = np.repeat(np.arange(rows), np.diff(indptr.astype(np.int64)))
    tiles[block_rows, indices.astype(np.int64)] = values
    return tiles.transpose(0, 2, 1, 3).reshape(rows * br, cols * bc)[: shape[0], : shape[1]]


def compress_nm(weight: np.ndarray, n: int, m: int) -> dict[str, np.ndarray]:
    padded = _pad(weight, 1, m)
    groups = padded.reshape(padded.shape[0], -1, m)
    counts = np.count_nonzero(groups, axis=2)
    if counts.max(initial=0) > n:
        raise SparcError(f"the weight is not {n}:{m} sparse (a group has {counts.max()} non-zeros)")
    order = np.argsort(groups == 0, axis=2, kind="stable")[:, :, :n]  # non-zeros first
    values = np.take_along_axis(groups, order, axis=2)
    return {
        "values": values.reshape(weight.shape[0], -1),
        "indices": order.reshape(weight.shape[0], -1).astype(np.uint8),
    }


def decompress_nm(values, indices, shape, n: int, m: int) -> np.ndarray:
    groups = math.ceil(shape[1] / m)
    dense = np.zeros((shape[0], groups, m), values.dtype)
    np.put_along_axis(
        dense, indices.reshape(shape[0], groups, n).astype(np.int64), values.reshape(shape[0], groups, n), axis=2
    )
    return dense.reshape(shape[0], -1)[:, : shape[1]]


def index_type(largest: int) -> type:
    """The narrowest integer type holding 0..largest: uint16, int32 or int64."""
    if largest <= np.iinfo(np.uint16).max:
        return np.uint16
    return np.int32 if largest <= np.iinfo(np.int32).max else np.int64


def nbytes(tensors: dict[str, np.ndarray]) -> int:
    return sum(t.nbytes for t in tensors.values())


def _pad(weight: np.ndarray, br: int, bc: int) -> np.ndarray:
    rows, cols = weight.shape
    padded = np.zeros((math.ceil(rows / br) * br, math.ceil(cols / bc) * bc), weight.dtype)
    padded[:rows, :cols] = weight
    return padded
