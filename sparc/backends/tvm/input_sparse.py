"""Linear layers whose input is thresholded (activation sparsity): only the surviving inputs' weights are read.

Y[m, :] = act(b + Σ_{k ∈ S} x̂[m, k] · W[k, :]) with x̂ = Where(|x| < t, 0, x) (``ActivationSparsity``)
and S the inputs that survive in at least one of the M rows (M ≤ ``MAX_ROWS``, decode). W is
kept K-major, so a surviving input reads its own weight row and an input below the threshold in
every row costs no weight bytes: at a fraction f of inputs zeroed, about (1 − f) of the dense
bytes for one row. The kernel thresholds X itself (t is baked in):

1. compaction (serial, branch-free): for k = 0..K−1 the index k and the thresholded column
   x̂[:, k] are written at position ``count``, which advances when some |x[m, k]| ≥ t;
2. the surviving rows of W are split into ``tasks`` contiguous ranges run in parallel; each
   task streams its rows and adds x̂[m, j] · W[index[j], :] into its own partial sums
   ``part[task, m, :]`` (L1/L2 resident), ``UNROLL`` rows per step (the list is padded with
   zero entries so every step is full); rows of at most ``PREFETCH_ROW_BYTES`` are prefetched
   ``PREFETCH_STEPS`` steps ahead (the hardware prefetchers need longer runs to start; on
   longer rows a software prefetch only costs instructions: measured on 192- and 576-column rows);
3. Y[m, :] = act(b + Σ_task part[task, m, :]), vectorized.

Two weight layouts:
- ``rows``: W[K, N'] dense, N' = N rounded up to 16;
- ``blocks`` (the combined kernel, for a weight with 16×1 block sparsity too): each row k of
  W[K, N'] stored as its non-zero 16-output blocks, ``values[nnzb, 16]``,
  ``columns[nnzb]`` (block index) and ``starts[K + 1]``: a surviving input reads only its
  stored blocks, so the bytes are about (1 − f) × the weight's block density.

Streaming whole rows is what makes the skipping pay when W comes from memory: output chunks of
a few vectors in registers, each reading its 256-byte piece of every surviving row, ran no
faster than dense there (the hardware prefetchers cannot follow them), while whole rows keep
most of the dense stream's bandwidth. The scratch (indices, columns, count, partial sums) is
allocated once per call, outside the parallel loop.

Choice (:func:`choose`), per layer: the input-sparse layouts (``blocks`` when at most
``MAX_BLOCK_SHARE`` of the 16-output blocks hold a non-zero) against the layout ``choose.py``
keeps for the weight alone (which reads the thresholded input as any input). ``measure``: each
input-sparse kernel is timed here as ``choose.py`` times decode layers, one call at a time with
everything but X flushed from the caches (the weight streams from DRAM), on X whose rows each
have the calibrated fraction of entries below the threshold; the fastest wins. Otherwise
(``dense``, ``heuristic``) by bytes: the input-sparse layout when its expected bytes, (1 − f^M)
× what it stores, are at most ``MARGIN`` × what the weight's layout stores. An unknown fraction
(a Where no ``ActivationSparsity`` calibrated) keeps the weight's layout (``lower.py``). Timings are cached in
``$SPARC_CACHE/tvm-input-sparse.json`` by shape, rows, epilogue, layout, stored share and fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm.script import tirx as T

from sparc.backends.tvm import kernels
from sparc.backends.tvm.choose import Choice, load_timings, save_timings, stored_fraction, time_kernel, time_layout
from sparc.backends.tvm.kernels import ACTIVATIONS, LANES

MAX_ROWS = 8  # up to this many rows (decode) a thresholded input gets this kernel
UNROLL = 4  # surviving rows of W added per step (dense rows)
MAX_BLOCK_SHARE = 0.7  # the blocks layout is a candidate when at most this share of blocks is stored
MARGIN = 0.8  # by bytes: input-sparse when it reads at most this share of the weight layout's bytes
PREFETCH_ROW_BYTES = 1024  # dense rows up to this long are prefetched in software
PREFETCH_STEPS = 2  # ... this many steps (of UNROLL rows) ahead
TIMINGS = "tvm-input-sparse.json"  # timing cache in $SPARC_CACHE
VERSION = 2  # bump when the kernel changes: cached timings are keyed by it


@dataclass(frozen=True)
class InputSparseLayout:
    """How the weight of an input-sparse layer is stored: ``rows`` (dense) or ``blocks`` (16-output
    blocks of each row, the weight's own block sparsity)."""

    format: str = "rows"

    def describe(self) -> str:
        return "input-sparse, dense rows" if self.format == "rows" else "input-sparse, 16x1 blocks"


def padded_columns(n_out: int) -> int:
    """N rounded up to whole vectors of ``LANES`` outputs."""
    return -(-n_out // LANES) * LANES


def pack(weight_kn: np.ndarray, layout: InputSparseLayout) -> list[np.ndarray]:
    """The kernel's weight tensors for W[K, N] in ``layout`` (module docstring)."""
    k_in, n_out = weight_kn.shape
    padded = np.zeros((k_in, padded_columns(n_out)), np.float32)
    padded[:, :n_out] = weight_kn
    if layout.format == "rows":
        return [padded]
    blocks = padded.reshape(k_in, -1, LANES)
    stored = np.any(blocks != 0, axis=2)
    rows, columns = np.nonzero(stored)
    values = blocks[rows, columns]
    starts = np.zeros(k_in + 1, np.int32)
    np.cumsum(stored.sum(axis=1), out=starts[1:])
    if len(values) == 0:  # an all-zero weight: one unread block keeps the buffers non-empty
        values, columns = np.zeros((1, LANES), np.float32), np.zeros(1, np.int64)
    return [np.ascontiguousarray(values), columns.astype(np.int32), starts]


def input_sparse_kernel(rows: int, k_in: int, n_out: int, threshold: float, activation: str,
                        layout: InputSparseLayout, weights: list[np.ndarray], tasks: int = 1):
    """The PrimFunc ``(X[M, K], *weights, b[N'], Y[M, N'])`` of the module docstring, N' =
    :func:`padded_columns`; ``tasks``: parallel ranges of surviving rows (the threads)."""
    M, K, NP, W = rows, k_in, padded_columns(n_out), LANES
    U = UNROLL if layout.format == "rows" else 1
    PAD = tasks * U  # zero entries after the surviving ones, so every task's steps are full
    prefetch = NP * 4 <= PREFETCH_ROW_BYTES
    act = ACTIVATIONS[activation]
    t = T.float32(threshold)

    def kept(X, m, k):
        return T.Not(T.fabs(X[m, k]) < t)

    def kept_in_some_row(X, k):
        result = kept(X, 0, k)
        for m in range(1, M):
            result = T.Or(result, kept(X, m, k))
        return result

    @T.macro
    def compact(X, index, column, count):
        count[0] = 0
        for k in range(K):
            index[count[0]] = k
            for m in T.unroll(M):
                column[count[0], m] = T.if_then_else(kept(X, m, k), X[m, k], T.float32(0))
            count[0] = count[0] + T.Cast("int32", kept_in_some_row(X, k))
        for p in range(PAD):
            index[count[0] + p] = 0
            for m in T.unroll(M):
                column[count[0] + p, m] = T.float32(0)

    @T.macro
    def finish(B, Y, part):
        for m in range(M):
            for n in T.vectorized(NP):
                Y[m, n] = B[n]
            for task in range(tasks):
                for n in T.vectorized(NP):
                    Y[m, n] = Y[m, n] + part[task, m, n]
            for n in T.vectorized(NP):
                Y[m, n] = act(Y[m, n])

    @T.prim_func
    def input_sparse_rows(
        X: T.Buffer((M, K), "float32"), Wk: T.Buffer((K, NP), "float32"),
        B: T.Buffer((NP,), "float32"), Y: T.Buffer((M, NP), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        index = T.decl_buffer((K + PAD,), "int32")
        column = T.decl_buffer((K + PAD, M), "float32")
        count = T.decl_buffer((1,), "int32")
        part = T.decl_buffer((tasks, M, NP), "float32")
        compact(X, index, column, count)
        steps = (count[0] + PAD - 1) // PAD  # steps of U rows per task
        for task in T.parallel(tasks):
            for m in range(M):
                for n in T.vectorized(NP):
                    part[task, m, n] = T.float32(0)
            for s in range(steps):
                if prefetch:
                    for u in T.unroll(U):
                        ahead = T.min((task * steps + s + PREFETCH_STEPS) * U + u, count[0] + PAD - 1)
                        for line in T.unroll(NP // W):
                            T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                                Wk[index[ahead], line * W]), 0, 3, 1))
                for v in range(NP // W):
                    for m in T.unroll(M):
                        for u in T.unroll(U):
                            part[task, m, T.Ramp(v * W, 1, W)] = part[task, m, T.Ramp(v * W, 1, W)] + column[
                                (task * steps + s) * U + u, m] * Wk[index[(task * steps + s) * U + u], T.Ramp(v * W, 1, W)]
        finish(B, Y, part)

    NZ = weights[0].shape[0]

    @T.prim_func
    def input_sparse_blocks(
        X: T.Buffer((M, K), "float32"), V: T.Buffer((NZ, W), "float32"), C: T.Buffer((NZ,), "int32"),
        S: T.Buffer((K + 1,), "int32"), B: T.Buffer((NP,), "float32"), Y: T.Buffer((M, NP), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        index = T.decl_buffer((K + PAD,), "int32")
        column = T.decl_buffer((K + PAD, M), "float32")
        count = T.decl_buffer((1,), "int32")
        part = T.decl_buffer((tasks, M, NP), "float32")
        compact(X, index, column, count)
        steps = (count[0] + PAD - 1) // PAD
        for task in T.parallel(tasks):
            for m in range(M):
                for n in T.vectorized(NP):
                    part[task, m, n] = T.float32(0)
            for s in range(steps):
                j = task * steps + s
                first = S[index[j]]
                for b in range(S[index[j] + 1] - first):
                    for m in T.unroll(M):
                        part[task, m, T.Ramp(C[first + b] * W, 1, W)] = part[task, m, T.Ramp(C[first + b] * W, 1, W)] + \
                            column[j, m] * V[first + b, T.Ramp(0, 1, W)]
        finish(B, Y, part)

    return input_sparse_rows if layout.format == "rows" else input_sparse_blocks


@dataclass
class InputSparseChoice:
    """The kernel of a linear layer with a thresholded input: an input-sparse ``layout``, or
    None for the ``weight`` layout ``choose.py`` picked; ``timings_ms`` of every candidate."""

    shape: tuple[int, int]  # (N, K)
    rows: int
    fraction: float
    layout: InputSparseLayout | None
    weight: Choice
    timings_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        kept = self.layout.describe() if self.layout else f"{self.weight.layout.describe()} (weight alone)"
        zeroed = f"input {self.fraction:.0%} zero"
        epilogue = "" if self.weight.activation == "none" else f" + {self.weight.activation}"
        times = ", ".join(f"{k} {v:.3f}" for k, v in self.timings_ms.items())
        return (f"{self.shape[0]}x{self.shape[1]}{epilogue} rows {self.rows}, {zeroed}: {kept}"
                + (f" ({times} ms)" if times else " (by bytes, not timed)"))


def block_share(weight_kn: np.ndarray) -> float:
    """The share of 16-output blocks of W[K, N] (N padded) that hold a non-zero."""
    k_in, n_out = weight_kn.shape
    padded = np.zeros((k_in, padded_columns(n_out)), bool)
    padded[:, :n_out] = weight_kn != 0
    return float(padded.reshape(k_in, -1, LANES).any(axis=2).mean())


def candidates(weight_kn: np.ndarray) -> dict[InputSparseLayout, float]:
    """The input-sparse layouts for W[K, N] and the share of the dense weight each stores."""
    found = {InputSparseLayout("rows"): 1.0}
    share = block_share(weight_kn)
    if share <= MAX_BLOCK_SHARE:
        found[InputSparseLayout("blocks")] = share
    return found


def choose(weight_kn: np.ndarray, rows: int, fraction: float, weight: Choice, target, *, threads: int,
           mode: str) -> InputSparseChoice:
    """The kernel for a layer with a thresholded input zeroing ``fraction`` of x's entries, at most
    ``MAX_ROWS`` rows (module docstring); ``weight``: the layout ``choose.py`` keeps for the weight alone."""
    shape = (weight_kn.shape[1], weight_kn.shape[0])
    options = candidates(weight_kn)
    alone_share = stored_fraction(np.ascontiguousarray(weight_kn.T), weight.layout)
    if mode != "measure":
        surviving = 1 - fraction ** rows
        best = min(options, key=options.__getitem__)
        keep = surviving * options[best] <= MARGIN * alone_share
        return InputSparseChoice(shape, rows, fraction, best if keep else None, weight)
    cache = load_timings(TIMINGS)
    prefix = f"v{VERSION}.{kernels.VERSION}|{target}|t{threads}|{shape}|rows{rows}|{weight.activation}|"
    timings = {}
    for layout, share in options.items():
        key = f"{prefix}{layout.describe()}|fill{share:.2f}|f{fraction:.2f}"
        if key not in cache:
            library = _input_sparse_library(weight_kn, rows, weight.activation, layout, target, threads)
            x = inputs_with_fraction(rows, weight_kn.shape[0], fraction)
            cache[key] = time_kernel(library, x, pack(weight_kn, layout), padded_columns(weight_kn.shape[1]))
            save_timings(cache, TIMINGS)
        timings[layout.describe()] = cache[key]
    alone = f"{weight.layout.describe()} (weight alone)"
    key = f"{prefix}{alone}|fill{alone_share:.2f}"
    if key not in cache:
        cache[key] = time_layout(np.ascontiguousarray(weight_kn.T), rows, weight.layout, weight.activation, target)
        save_timings(cache, TIMINGS)
    timings[alone] = cache[key]
    best = min(options, key=lambda layout: timings[layout.describe()])
    return InputSparseChoice(shape, rows, fraction, best if timings[best.describe()] < timings[alone] else None,
                             weight, timings)


def inputs_with_fraction(rows: int, k_in: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Random X[rows, K] with ``fraction`` of each row's entries below 1 in magnitude."""
    x = np.random.default_rng(seed).normal(size=(rows, k_in))
    scale = np.quantile(np.abs(x), fraction, axis=1, keepdims=True) if fraction > 0 else np.zeros((rows, 1))
    return (x / np.maximum(scale, 1e-30)).astype(np.float32)


def _input_sparse_library(weight_kn, rows: int, activation: str, layout: InputSparseLayout, target, threads: int):
    """The kernel compiled alone, thresholding at 1."""
    k_in, n_out = weight_kn.shape
    func = input_sparse_kernel(rows, k_in, n_out, 1.0, activation, layout, pack(weight_kn, layout), tasks=threads)
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
