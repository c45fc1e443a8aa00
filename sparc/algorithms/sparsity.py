"""Fine-grained sparsity patterns: mask selection, verification, and the node annotation.

Weights are seen as W[out, in] (rows are output features, columns input features):
- ``nm``: in every row, each run of ``m`` consecutive inputs keeps at most ``n`` non-zeros;
- ``block``: W is tiled in ``block = (rows, cols)`` tiles; a tile is kept or zero as a whole
  (16×1: 16 output features share each kept input, what CPU kernels turn into speed);
- ``unstructured``: any entries, ``density`` of them kept.
The annotation ``metadata_props["sparc.sparsity"]`` (JSON: kind, n, m, block, density,
method) is read and written only here, so it survives export and every tool agrees on it.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx_ir as ir

from sparc.errors import SparcError

ANNOTATION_KEY = "sparc.sparsity"
KINDS = ("nm", "block", "unstructured")


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A sparsity pattern (see the module docstring); ``density`` is the kept fraction."""

    kind: str
    density: float
    n: int | None = None
    m: int | None = None
    block: tuple[int, int] | None = None
    method: str | None = None

    def describe(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.block[0]}x{self.block[1]} blocks, density {self.density:.2f}"
        return f"unstructured, density {self.density:.2f}"

    def to_json(self) -> str:
        data = {"kind": self.kind, "n": self.n, "m": self.m, "density": round(self.density, 6),
                "block": list(self.block) if self.block else None, "method": self.method}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Pattern:
        try:
            data = json.loads(text)
            block = tuple(data["block"]) if data.get("block") else None
            pattern = cls(data["kind"], float(data["density"]), data.get("n"), data.get("m"), block, data.get("method"))
        except (ValueError, KeyError, TypeError) as exc:
            raise SparcError(f"malformed {ANNOTATION_KEY} annotation {text!r}: {exc}") from None
        if pattern.kind not in KINDS:
            raise SparcError(f"{ANNOTATION_KEY} annotation has unknown kind {pattern.kind!r}")
        return pattern


def annotate(node: ir.Node, pattern: Pattern) -> None:
    """Record ``pattern`` on ``node``."""
    node.metadata_props[ANNOTATION_KEY] = pattern.to_json()


def annotation(node: ir.Node) -> Pattern | None:
    """The pattern recorded on ``node``, or None."""
    text = node.metadata_props.get(ANNOTATION_KEY)
    return None if text is None else Pattern.from_json(text)


# -- masks ---------------------------------------------------------------------------------


def select_mask(scores: np.ndarray, pattern: Pattern, *, per_row: bool = False) -> np.ndarray:
    """Boolean keep-mask of W[out, in]'s shape keeping the highest ``scores`` in ``pattern``.

    Unstructured masks keep the top ``density`` of the layer, or of each row (``per_row``).
    """
    if pattern.kind == "nm":
        return _nm_mask(scores, pattern.n, pattern.m)
    if pattern.kind == "block":
        return _block_mask(scores, pattern.block, pattern.density)
    if per_row:
        keep = int(round(pattern.density * scores.shape[1]))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
        mask = np.zeros(scores.shape, bool)
        np.put_along_axis(mask, order, True, axis=1)
        return mask
    return _top(scores.reshape(-1), int(round(pattern.density * scores.size))).reshape(scores.shape)


def _top(flat: np.ndarray, keep: int) -> np.ndarray:
    mask = np.zeros(flat.shape, bool)
    if keep > 0:
        mask[np.argsort(-flat, kind="stable")[:keep]] = True
    return mask


def _nm_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    rows, cols = scores.shape
    padded = np.full((rows, math.ceil(cols / m) * m), -np.inf)
    padded[:, :cols] = scores
    groups = padded.reshape(rows, -1, m)
    order = np.argsort(-groups, axis=2, kind="stable")[:, :, :n]
    mask = np.zeros(groups.shape, bool)
    np.put_along_axis(mask, order, True, axis=2)
    return mask.reshape(rows, -1)[:, :cols]


def _block_mask(scores: np.ndarray, block: tuple[int, int], density: float) -> np.ndarray:
    tiles = tile_sums(scores, block)
    keep = _top(tiles.reshape(-1), int(round(density * tiles.size))).reshape(tiles.shape)
    return expand_tiles(keep, block, scores.shape)


def tile_sums(array: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Sum of ``array`` over each block (zero-padded to whole tiles)."""
    br, bc = block
    rows, cols = array.shape
    padded = np.zeros((math.ceil(rows / br) * br, math.ceil(cols / bc) * bc))
    padded[:rows, :cols] = array
    return padded.reshape(padded.shape[0] // br, br, padded.shape[1] // bc, bc).sum(axis=(1, 3))


def expand_tiles(tiles: np.ndarray, block: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A per-entry array from per-tile values, cropped to ``shape``."""
    return np.repeat(np.repeat(tiles, block[0], axis=0), block[1], axis=1)[: shape[0], : shape[1]]


# -- verification ----------------------------------------------------------------------------


def verify(weight_oi: np.ndarray, pattern: Pattern) -> tuple[bool, float, str]:
    """(holds, actual density, explanation) for ``weight_oi`` against ``pattern``."""
    nonzero = weight_oi != 0
    density = float(nonzero.mean()) if nonzero.size else 0.0
    if pattern.kind == "nm":
        rows, cols = nonzero.shape
        padded = np.zeros((rows, math.ceil(cols / pattern.m) * pattern.m), bool)
        padded[:, :cols] = nonzero
        worst = int(padded.reshape(rows, -1, pattern.m).sum(axis=2).max(initial=0))
        ok = worst <= pattern.n
        return ok, density, f"at most {worst} non-zeros in every {pattern.m}" + ("" if ok else f" (> {pattern.n})")
    if pattern.kind == "block":  # non-zeros only inside the kept tiles (which may hold zeros)
        occupied = int(np.count_nonzero(tile_sums(nonzero.astype(np.float64), pattern.block)))
        tiles = math.ceil(nonzero.shape[0] / pattern.block[0]) * math.ceil(nonzero.shape[1] / pattern.block[1])
        # selections round (SparseGPT once per column block): the density holds to 0.1%
        allowed = math.floor(pattern.density * tiles * (1 + 1e-3) + 0.5)
        ok = occupied <= allowed
        return ok, density, f"{occupied} of {tiles} tiles hold non-zeros" + ("" if ok else f" (> {allowed})")
    allowed = math.ceil(pattern.density * nonzero.size * (1 + 1e-6))  # the annotation rounds
    ok = int(np.count_nonzero(nonzero)) <= allowed
    return ok, density, f"density {density:.4f}" + ("" if ok else f" > {pattern.density:.4f}")
