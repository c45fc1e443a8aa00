"""CPU kernels for linear layers with a constant weight, written in TVMScript (TVM 0.27).

Every kernel computes Y[M, N] = act(X[M, K] · Wᵀ + b) for W[N, K] stored in one of:

- ``dense``: panels ``V[N/16, K, 16]`` (16 output rows side by side per input column), N
  padded to a multiple of 32.
- ``bsr`` with br×bc blocks (br | N): ``values[nnzb, br, bc]``, ``indices[nnzb]`` (block
  column), ``indptr[N/br + 1]``; the last block column may overhang K (guarded loads).
- ``csr`` (unstructured): ``values[nnz]``, ``columns[nnz]`` (uint16 when K allows) and
  ``starts[N, S + 1]``, where each row's values of each slice of input columns begin.
- ``nm``: ``values[N, G·n]`` and ``positions[N, G·n]`` (place inside each group of m inputs),
  G = ceil(K / m); or, on AVX-512 targets, the same per 16-row panel (``_nm_lanes``).
- ``bitmap`` (unstructured, AVX-512, N a multiple of 16): per panel of 16 output rows and input
  column a uint16 mask of the rows holding a non-zero, ``masks[N/16, K]``, the non-zeros packed
  in (panel, column, row) order then zero padding, ``values[nnz + 1040]``, and ``starts[N/16]``,
  where each panel's values begin (``_bitmap``): 4·nnz + 2·N·K/16 bytes, at 50% density 53% of
  the dense bytes.

Schedules (written into the loops, no tuning): dense and BSR keep a register tile of
accumulators (rows of X × output features) while the stored input columns stream by: for
each, one vector load of weights and one FMA per row with X's entry broadcast from memory.
Dense tiles are 8 rows × 32 outputs (16 registers); BSR tiles are 8 or 16 rows × br. A single
dense row (M = 1, or rows after the last full tile) splits the work four ways instead, so four
independent FMA chains hide the FMA latency; BSR, N:M lanes and bitmap kernels take the rows
after the last full tile as one tile, rotating over 4 / rows accumulator sets when it has fewer
than four rows. BSR has two loop orders: output panels in
parallel, each sweeping all rows (the weights stay in cache; best for few rows), or row tiles
in parallel, each sweeping all panels (X's tile stays in L1 while the compressed weight
streams from L2; best for many rows at low density). CSR vectorizes over rows of Xᵀ instead
(``_csr``). The layout choice times the candidates. The epilogue (bias, activation) is
applied when a tile is written; activations use polynomial exp/erf (no libm calls), so
epilogues vectorize too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm.script import tirx as T

from sparc.ops import formats

VERSION = 6  # bump when kernels change: cached layout timings are keyed by it
ROWS = 8  # rows of X per register tile (dense, and BSR by default)
PANEL = 16  # output rows per dense panel (one 512-bit vector)
DENSE_PANELS = 2  # dense panels per register tile
SPLIT = 4  # independent accumulators of a one-row tile
CSR_ROWS = 64  # rows of X per unstructured tile (4 vectors)
CSR_CHUNKS = 8  # output chunks per row tile run in parallel (unstructured)
CSR_SLICE = 96  # input columns per slice (unstructured): a slice of Xᵀ's row tile is 24 KB
ROW_CHUNK = 16  # rows per parallel task of softmax / layer norm (their scratch is allocated per task)
LANES = 16  # float32 lanes of a vector register (AVX-512; narrower targets split it)
PREFETCH = 1024  # bitmap: stored values (4 KB) ahead of the current one that are prefetched


def fast_exp(x):
    """e^x in float32 without libm (so LLVM vectorizes it): x·log2(e) = n + f, |f| ≤ 1/2,
    2^f by its degree-6 Taylor polynomial, 2^n built in the exponent bits; relative error
    below 1e-6 (a few float32 ulps). Inputs are clamped to 87.3 above; below -87.3 the
    result is 0, never a subnormal (a masked attention score would otherwise leave
    subnormal probabilities, and every later multiply by one costs a microcode assist)."""
    low = x < T.float32(-87.3)
    x = T.max(T.min(x, T.float32(87.3)), T.float32(-87.3))
    t = x * T.float32(1.4426950408889634)
    n = T.floor(t + T.float32(0.5))
    f = (t - n) * T.float32(0.6931471805599453)
    p = T.float32(1 / 720)
    for c in (1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0):
        p = p * f + T.float32(c)
    return T.if_then_else(low, T.float32(0), p * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23)))


def fast_erf(x):
    """erf by Abramowitz & Stegun 7.1.26 with :func:`fast_exp`: absolute error below 5e-7 in float32."""
    a = T.fabs(x)
    t = T.float32(1) / (T.float32(1) + T.float32(0.3275911) * a)
    p = T.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        p = p * t + T.float32(c)
    y = T.float32(1) - p * t * fast_exp(-a * a)
    return T.if_then_else(x < T.float32(0), -y, y)


def fast_sigmoid(x):
    return T.float32(1) / (T.float32(1) + fast_exp(-x))


ACTIVATIONS = {
    "none": lambda x: x,
    "relu": lambda x: T.max(x, T.float32(0)),
    "gelu": lambda x: T.float32(0.5) * x * (T.float32(1) + fast_erf(x * T.float32(1 / math.sqrt(2)))),
    "gelu_tanh": lambda x: x * fast_sigmoid(
        T.float32(2 * math.sqrt(2 / math.pi)) * (x + T.float32(0.044715) * x * x * x)
    ),
    "silu": lambda x: x * fast_sigmoid(x),
    "sigmoid": fast_sigmoid,
    "tanh": lambda x: T.float32(2) * fast_sigmoid(T.float32(2) * x) - T.float32(1),
}


@dataclass(frozen=True)
class Layout:
    """How one linear layer's weight is stored for its kernel."""

    format: str  # "dense" | "bsr" | "csr" | "nm" | "bitmap"
    block: tuple[int, int] = (1, 1)
    n: int = 0
    m: int = 0
    order: str = "panels"  # bsr loop order: "panels" (output panels in parallel) or "rows";
    # nm: "panels" (one output row at a time) or "lanes" (16 rows per vector, AVX-512 permutes)
    tile: int = ROWS  # bsr: rows of X per register tile

    def describe(self) -> str:
        if self.format == "bsr":
            rows = ", rows outer" if self.order == "rows" else ""
            tile = "" if self.tile == ROWS else f", tile {self.tile}"
            return f"bsr {self.block[0]}x{self.block[1]}{rows}{tile}"
        if self.format == "nm":
            return f"{self.n}:{self.m}" + (", lane permute" if self.order == "lanes" else "")
        if self.format == "csr":
            return "csr, rows vectorized"
        if self.format == "bitmap":
            return "bitmap 16-row panels"
        return "dense"


def pack(weight_nk: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """The kernel's weight tensors for W[N, K] (float32) in ``layout``."""
    weight_nk = np.ascontiguousarray(weight_nk, np.float32)
    n_out, k_in = weight_nk.shape
    if layout.format == "dense":
        rows = math.ceil(n_out / (PANEL * DENSE_PANELS)) * PANEL * DENSE_PANELS
        padded = np.zeros((rows, k_in), np.float32)
        padded[:n_out] = weight_nk
        return [np.ascontiguousarray(padded.reshape(rows // PANEL, PANEL, k_in).transpose(0, 2, 1))]
    if layout.format == "bsr":
        tensors = formats.compress_bsr(weight_nk, layout.block)
        values, indices = tensors["values"], tensors["indices"].astype(np.int32)
        if len(indices) == 0:  # an all-zero weight: one unread block keeps the buffers non-empty
            values, indices = np.zeros((1, *layout.block), np.float32), np.zeros(1, np.int32)
        return [values, indices, tensors["indptr"].astype(np.int32)]
    if layout.format == "csr":
        tensors = formats.compress_csr(weight_nk)
        values, columns = tensors["values"], tensors["indices"]
        starts = _slice_starts(tensors["indptr"].astype(np.int64), columns, k_in)
        if len(values) == 0:
            values, columns = np.zeros(1, np.float32), np.zeros(1, columns.dtype)
        return [values, columns, starts]
    if layout.format == "bitmap":
        return _pack_bitmap(weight_nk)
    tensors = formats.compress_nm(weight_nk, layout.n, layout.m)
    if layout.order == "lanes":  # [N/16, slots, 16]: sixteen output rows side by side per slot
        def panels(a):
            return np.ascontiguousarray(a.reshape(n_out // LANES, LANES, -1).transpose(0, 2, 1))
        return [panels(tensors["values"]), panels(tensors["indices"]).astype(np.uint8)]
    return [tensors["values"], tensors["indices"].astype(np.int32)]


def _pack_bitmap(weight_nk: np.ndarray) -> list[np.ndarray]:
    """[masks, values, starts] of the ``bitmap`` layout for W[N, K] (N a multiple of 16): bit r of
    masks[p, k] is W[16p + r, k] ≠ 0; values holds those W[16p + r, k] ordered by (p, k, r), then
    ``PREFETCH`` + 16 zeros (the last vector load and prefetch stay inside); starts[p] is the index
    of panel p's first value."""
    panels = weight_nk.reshape(-1, LANES, weight_nk.shape[1]).transpose(0, 2, 1)  # [N/16, K, 16]
    nonzero = panels != 0
    masks = np.ascontiguousarray(np.packbits(nonzero, axis=2, bitorder="little")).view("<u2")[..., 0]
    values = np.concatenate([panels[nonzero], np.zeros(PREFETCH + LANES, np.float32)])
    per_panel = nonzero.sum(axis=(1, 2))
    starts = (np.cumsum(per_panel) - per_panel).astype(np.int32)
    return [np.ascontiguousarray(masks, np.uint16), values, starts]


def _slice_starts(indptr: np.ndarray, columns: np.ndarray, k_in: int) -> np.ndarray:
    """P[n, s]: the index of row n's first stored value in column slice s (or later); P[n, S] is
    the row's end. CSR is sorted by (row, column), so every start is one binary search of
    row·K + column for row·K + the slice's first column."""
    rows = len(indptr) - 1
    keys = np.repeat(np.arange(rows, dtype=np.int64), np.diff(indptr)) * k_in + columns
    bounds = np.minimum(np.arange(math.ceil(k_in / CSR_SLICE) + 1) * CSR_SLICE, k_in)
    return np.searchsorted(keys, np.arange(rows, dtype=np.int64)[:, None] * k_in + bounds).astype(np.int32)


def linear_kernel(m_rows: int, k_in: int, n_out: int, layout: Layout, weights: list[np.ndarray], activation: str):
    """The PrimFunc ``(X, *weights, bias, Y)`` for ``layout`` (weights give the stored sizes)."""
    act = ACTIVATIONS[activation]
    if layout.format == "dense":
        return _dense(m_rows, k_in, weights[0].shape[0], act)
    if layout.format == "bsr":
        return _bsr(m_rows, k_in, n_out, layout.block, weights[0].shape[0], act, layout.order == "rows", layout.tile)
    if layout.format == "csr":
        return _csr(m_rows, k_in, n_out, weights[0].shape[0], str(weights[1].dtype), act)
    if layout.format == "bitmap":
        return _bitmap(m_rows, k_in, n_out, weights[1].shape[0], act)
    if layout.order == "lanes":
        return _nm_lanes(m_rows, k_in, n_out, layout.n, layout.m, act)
    return _nm(m_rows, k_in, n_out, layout.n, layout.m, act)


def _dense(M: int, K: int, NP: int, act):
    """``NP`` panels of 16 output rows, ``DENSE_PANELS`` at a time: a ``ROWS`` × 32 accumulator
    tile (16 vector registers) per step of k, one weight vector load per 8 FMAs. A single row
    (M = 1, or the rows after the last full tile) splits k four ways instead, so that four
    independent FMA chains hide the FMA latency."""
    BR, P, R, KU = PANEL, DENSE_PANELS, ROWS, SPLIT
    NQ = NP // P
    TILES = M // R
    C = P * BR

    @T.macro
    def tile(X, V, B, Y, acc, q, first):
        for i in T.unroll(R):
            for c in T.vectorized(C):
                acc[i, c] = B[q * C + c]
        for k in range(K):
            for p in T.unroll(P):
                for i in T.unroll(R):
                    for b in T.vectorized(BR):
                        acc[i, p * BR + b] = acc[i, p * BR + b] + V[q * P + p, k, b] * X[first + i, k]
        for i in T.unroll(R):
            for c in T.vectorized(C):
                Y[first + i, q * C + c] = act(acc[i, c])

    @T.macro
    def one_row(X, V, B, Y, acc, q, row):
        for u in T.unroll(KU):
            for c in T.vectorized(C):
                acc[u, c] = T.if_then_else(u == 0, B[q * C + c], T.float32(0))
        for k4 in range(K // KU):
            for u in T.unroll(KU):
                for p in T.unroll(P):
                    for b in T.vectorized(BR):
                        acc[u, p * BR + b] = acc[u, p * BR + b] + V[q * P + p, k4 * KU + u, b] * X[row, k4 * KU + u]
        for k in range(K // KU * KU, K):
            for p in T.unroll(P):
                for b in T.vectorized(BR):
                    acc[0, p * BR + b] = acc[0, p * BR + b] + V[q * P + p, k, b] * X[row, k]
        for c in T.vectorized(C):
            Y[row, q * C + c] = act(acc[0, c] + acc[1, c] + acc[2, c] + acc[3, c])

    @T.prim_func
    def dense_linear(
        X: T.Buffer((M, K), "float32"), V: T.Buffer((NP, K, BR), "float32"),
        B: T.Buffer((NP * BR,), "float32"), Y: T.Buffer((M, NP * BR), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for q in T.parallel(NQ):
            acc = T.decl_buffer((R, C), "float32", scope="local")
            acc1 = T.decl_buffer((KU, C), "float32", scope="local")
            for t in range(TILES):
                tile(X, V, B, Y, acc, q, t * R)
            for row in range(TILES * R, M):
                one_row(X, V, B, Y, acc1, q, row)

    return dense_linear


def _bsr(M: int, K: int, N: int, block: tuple[int, int], NNZB: int, act, rows_outer: bool, R: int):
    """Per output panel (br rows of W) and tile of ``R`` rows of X: an R × br accumulator tile,
    one weight vector load per R FMAs (X's entries are broadcast from memory into the FMAs).
    The rows after the last full tile form one tile; a tile of c < ``SPLIT`` rows rotates over
    ``SPLIT // c`` accumulator sets by stored block (summed at the end), so at least four FMA
    chains are in flight."""
    BR, BC = block
    NB = N // BR
    TILES, REST = divmod(M, R)
    NZ = max(NNZB, 1)  # a weight with no stored block still needs a buffer
    load = _guarded_load(K) if K % BC else _plain_load

    @T.macro
    def stored_block(X, V, I, acc, first, count, j, slot):
        for c in T.unroll(BC):
            for i in T.unroll(count):
                for b in T.vectorized(BR):
                    acc[slot * count + i, b] = acc[slot * count + i, b] + V[j, b, c] * load(X, first + i, I[j] * BC + c)

    @T.macro
    def tile(X, V, I, P, B, Y, acc, r, first, count, ways):
        for u in T.unroll(ways):
            for i in T.unroll(count):
                for b in T.vectorized(BR):
                    acc[u * count + i, b] = T.if_then_else(u == 0, B[r * BR + b], T.float32(0))
        for jq in range((P[r + 1] - P[r]) // ways):
            for u in T.unroll(ways):
                stored_block(X, V, I, acc, first, count, P[r] + jq * ways + u, u)
        for j in range(P[r] + (P[r + 1] - P[r]) // ways * ways, P[r + 1]):
            stored_block(X, V, I, acc, first, count, j, 0)
        for u in T.unroll(1, ways):
            for i in T.unroll(count):
                for b in T.vectorized(BR):
                    acc[i, b] = acc[i, b] + acc[u * count + i, b]
        for i in T.unroll(count):
            for b in T.vectorized(BR):
                Y[first + i, r * BR + b] = act(acc[i, b])

    @T.prim_func
    def bsr_panels_outer(
        X: T.Buffer((M, K), "float32"), V: T.Buffer((NZ, BR, BC), "float32"),
        I: T.Buffer((NZ,), "int32"), P: T.Buffer((NB + 1,), "int32"),
        B: T.Buffer((N,), "float32"), Y: T.Buffer((M, N), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for r in T.parallel(NB):
            acc = T.decl_buffer((max(R, SPLIT), BR), "float32", scope="local")
            for t in range(TILES):
                tile(X, V, I, P, B, Y, acc, r, t * R, R, 1)
            if REST > 0:
                tile(X, V, I, P, B, Y, acc, r, TILES * R, REST, _ways(REST))

    @T.prim_func
    def bsr_rows_outer(
        X: T.Buffer((M, K), "float32"), V: T.Buffer((NZ, BR, BC), "float32"),
        I: T.Buffer((NZ,), "int32"), P: T.Buffer((NB + 1,), "int32"),
        B: T.Buffer((N,), "float32"), Y: T.Buffer((M, N), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for t in T.parallel(TILES):
            acc = T.decl_buffer((R, BR), "float32", scope="local")
            for r in range(NB):
                tile(X, V, I, P, B, Y, acc, r, t * R, R, 1)
        if REST > 0:
            acc1 = T.decl_buffer((max(R, SPLIT), BR), "float32", scope="local")
            for r in range(NB):
                tile(X, V, I, P, B, Y, acc1, r, TILES * R, REST, _ways(REST))

    return bsr_rows_outer if rows_outer else bsr_panels_outer


def _csr(M: int, K: int, N: int, NNZ: int, column_type: str, act):
    """Unstructured sparsity (N a multiple of 16), vectorized over rows of X instead of output
    features. X is first transposed (Xᵀ[K, M'], M' = M rounded up to ``CSR_ROWS``). Per tile of
    ``CSR_ROWS`` rows and chunk of outputs, the inputs are swept in slices of ``CSR_SLICE``
    columns (that slice of Xᵀ stays in L1): for each output n, every stored w = W[n, c] of the
    slice adds w · Xᵀ[c, rows] to n's partial sums (one broadcast, ``CSR_ROWS``/16 vector loads
    and FMAs, independent chains). ``P[n, s]`` is where row n's values of slice s start. The
    partial sums are written back sixteen outputs at a time, row by row, with the epilogue.
    Columns are stored as uint16 when K allows, so a stored value costs 6 bytes."""
    W, TV, RT = LANES, CSR_ROWS // LANES, CSR_ROWS
    TP = (M + RT - 1) // RT
    MP = TP * RT
    S = (K + CSR_SLICE - 1) // CSR_SLICE
    GROUPS = N // W
    NCH = max(1, min(CSR_CHUNKS, GROUPS))
    CG = (GROUPS + NCH - 1) // NCH  # groups of 16 outputs per chunk
    CN = CG * W

    @T.macro
    def slice_sums(V, C, P, B, XT, part, acc, first, s, n, local):
        for v in T.unroll(TV):
            for w in T.vectorized(W):
                acc[v, w] = T.if_then_else(s == 0, B[n], part[local, v * W + w])
        for j in range(P[n, s], P[n, s + 1]):
            for v in T.unroll(TV):
                for w in T.vectorized(W):
                    acc[v, w] = acc[v, w] + V[j] * XT[T.Cast("int32", C[j]), first + v * W + w]
        for v in T.unroll(TV):
            for w in T.vectorized(W):
                part[local, v * W + w] = acc[v, w]

    @T.prim_func
    def csr_linear(
        X: T.Buffer((M, K), "float32"), V: T.Buffer((NNZ,), "float32"), C: T.Buffer((NNZ,), column_type),
        P: T.Buffer((N, S + 1), "int32"), B: T.Buffer((N,), "float32"), Y: T.Buffer((M, N), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        XT = T.decl_buffer((K, MP), "float32")
        for k in T.parallel(K):
            for m0 in range(MP // W):
                for m in T.vectorized(W):
                    XT[k, m0 * W + m] = T.if_then_else(m0 * W + m < M, X[T.min(m0 * W + m, M - 1), k], T.float32(0))
        for job in T.parallel(TP * NCH):
            part = T.decl_buffer((CN, RT), "float32")
            acc = T.decl_buffer((TV, W), "float32", scope="local")
            for s in range(S):
                for local in range(CN):
                    if job % NCH * CN + local < N:
                        slice_sums(V, C, P, B, XT, part, acc, job // NCH * RT, s, job % NCH * CN + local, local)
            for g in range(CG):
                if job % NCH * CN + g * W < N:
                    for r in range(RT):
                        if job // NCH * RT + r < M:
                            for w in T.vectorized(W):
                                Y[job // NCH * RT + r, job % NCH * CN + g * W + w] = act(part[g * W + w, r])

    return csr_linear


def _nm_lanes(M: int, K: int, N: int, n: int, m: int, act):
    """N:M for AVX-512 (N a multiple of 16, m ≤ 16): values and positions ``[N/16, slots, 16]``,
    sixteen output rows per vector. For slot s (group g = s // n) and a row of X, one unaligned
    load of X[row, g·m : g·m + 16] and one ``vpermps`` by the 16 positions (zero-extended bytes)
    give each lane its input, and one FMA adds value × input: per stored value a quarter of a
    byte of position beside its 4 bytes, no gathers. Rows of X are copied once with 16 floats of
    padding, so the last group's load stays inside the buffer. Tiles of ``ROWS`` rows, then one
    tile of the rest (rotating over 4 / rows accumulator sets by slot when it has fewer than
    four rows); panels in parallel."""
    W, R = LANES, ROWS
    G = math.ceil(K / m)
    S, NP, KP = G * n, N // LANES, G * m + LANES
    TILES, REST = divmod(M, R)

    @T.macro
    def slot(XP, V, Q, acc, p, first, count, s, u):
        for i in T.unroll(count):
            acc[u * count + i, T.Ramp(0, 1, W)] = acc[u * count + i, T.Ramp(0, 1, W)] + V[
                p, s, T.Ramp(0, 1, W)] * T.call_llvm_pure_intrin(
                "float32x16", "llvm.x86.avx512.permvar.sf.512",
                XP[first + i, T.Ramp(s // n * m, 1, W)], T.Cast("int32x16", Q[p, s, T.Ramp(0, 1, W)]))

    @T.macro
    def rows(XP, V, Q, B, Y, acc, p, first, count, ways):
        for u in T.unroll(ways):
            for i in T.unroll(count):
                for b in T.vectorized(W):
                    acc[u * count + i, b] = T.if_then_else(u == 0, B[p * W + b], T.float32(0))
        for sq in range(S // ways):
            for u in T.unroll(ways):
                slot(XP, V, Q, acc, p, first, count, sq * ways + u, u)
        for s in range(S // ways * ways, S):
            slot(XP, V, Q, acc, p, first, count, s, 0)
        for u in T.unroll(1, ways):
            for i in T.unroll(count):
                for b in T.vectorized(W):
                    acc[i, b] = acc[i, b] + acc[u * count + i, b]
        for i in T.unroll(count):
            for b in T.vectorized(W):
                Y[first + i, p * W + b] = act(acc[i, b])

    @T.prim_func
    def nm_lanes_linear(
        X: T.Buffer((M, K), "float32"), V: T.Buffer((NP, S, W), "float32"), Q: T.Buffer((NP, S, W), "uint8"),
        B: T.Buffer((N,), "float32"), Y: T.Buffer((M, N), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        XP = T.decl_buffer((M, KP), "float32")
        for r in T.parallel(M):
            for k in range(KP):
                XP[r, k] = T.if_then_else(k < K, X[r, T.min(k, K - 1)], T.float32(0))
        for p in T.parallel(NP):
            acc = T.decl_buffer((max(R, SPLIT), W), "float32", scope="local")
            for t in range(TILES):
                rows(XP, V, Q, B, Y, acc, p, t * R, R, 1)
            if REST > 0:
                rows(XP, V, Q, B, Y, acc, p, TILES * R, REST, _ways(REST))

    return nm_lanes_linear


def _bitmap(M: int, K: int, N: int, NV: int, act):
    """Unstructured sparsity for AVX-512 (``bitmap`` layout): per panel p of 16 outputs and
    input column k, ``vexpandps`` spreads the next popcount(mask) stored values to the lanes
    of the mask's set bits (zeros elsewhere): that vector is W[16p : 16p + 16, k], and each row
    i of the tile adds X[i, k] times it (one FMA, X's entry broadcast). The value offset is one
    running sum (an add per column, off the FMAs' path); a tile of c < ``SPLIT`` rows rotates
    over ``SPLIT // c`` accumulator sets by column (summed at the end), so at least four FMA
    chains are in flight. Every column prefetches the values ``PREFETCH`` ahead (the hardware
    prefetcher alone leaves a decode call short of DRAM bandwidth). Rows in tiles of ``ROWS``,
    then one tile of the rest; panels in parallel."""
    W, R = LANES, ROWS
    NP = N // W
    TILES, REST = divmod(M, R)

    @T.macro
    def column(X, Mk, V, acc, vec, off, p, first, count, k, slot):
        vec[T.Ramp(0, 1, W)] = T.call_llvm_pure_intrin(
            "float32x16", "llvm.x86.avx512.mask.expand", V[T.Ramp(off[0], 1, W)], T.Broadcast(T.float32(0), W),
            T.reinterpret("uint1x16", Mk[p, k]))
        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(V[off[0] + PREFETCH]),
                                      T.int32(0), T.int32(3), T.int32(1)))
        off[0] = off[0] + T.Cast("int64", T.popcount(Mk[p, k]))
        for i in T.unroll(count):
            for b in T.vectorized(W):
                acc[slot * count + i, b] = acc[slot * count + i, b] + vec[b] * X[first + i, k]

    @T.macro
    def rows(X, Mk, V, S, B, Y, acc, vec, off, p, first, count, ways):
        off[0] = T.Cast("int64", S[p])
        for u in T.unroll(ways):
            for i in T.unroll(count):
                for b in T.vectorized(W):
                    acc[u * count + i, b] = T.if_then_else(u == 0, B[p * W + b], T.float32(0))
        for kq in range(K // ways):
            for u in T.unroll(ways):
                column(X, Mk, V, acc, vec, off, p, first, count, kq * ways + u, u)
        for k in range(K // ways * ways, K):
            column(X, Mk, V, acc, vec, off, p, first, count, k, 0)
        for u in T.unroll(1, ways):
            for i in T.unroll(count):
                for b in T.vectorized(W):
                    acc[i, b] = acc[i, b] + acc[u * count + i, b]
        for i in T.unroll(count):
            for b in T.vectorized(W):
                Y[first + i, p * W + b] = act(acc[i, b])

    @T.prim_func
    def bitmap_linear(
        X: T.Buffer((M, K), "float32"), Mk: T.Buffer((NP, K), "uint16"), V: T.Buffer((NV,), "float32"),
        S: T.Buffer((NP,), "int32"), B: T.Buffer((N,), "float32"), Y: T.Buffer((M, N), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for p in T.parallel(NP):
            # global scope: stack arrays, which LLVM keeps in registers across the prefetches ("local"
            # ones are workspace allocations it cannot tell apart from the prefetched values)
            acc = T.decl_buffer((max(R, SPLIT), W), "float32")
            vec = T.decl_buffer((W,), "float32")
            off = T.decl_buffer((1,), "int64")  # 64-bit: no sign extension on the offset's chain
            for t in range(TILES):
                rows(X, Mk, V, S, B, Y, acc, vec, off, p, t * R, R, 1)
            if REST > 0:
                rows(X, Mk, V, S, B, Y, acc, vec, off, p, TILES * R, REST, _ways(REST))

    return bitmap_linear


def _ways(rows: int) -> int:
    """Accumulator sets for a tile of ``rows`` rows: ``SPLIT`` FMA chains at least."""
    return SPLIT // rows if rows < SPLIT else 1


def _nm(M: int, K: int, N: int, n: int, m: int, act):
    G = math.ceil(K / m)
    S = G * n
    TILES = M // ROWS
    load = _guarded_load(K) if K % m else _plain_load

    @T.prim_func
    def nm_linear(
        X: T.Buffer((M, K), "float32"), V: T.Buffer((N, S), "float32"), Q: T.Buffer((N, S), "int32"),
        B: T.Buffer((N,), "float32"), Y: T.Buffer((M, N), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for r in T.parallel(N):
            acc = T.decl_buffer((ROWS,), "float32", scope="local")
            one = T.decl_buffer((1,), "float32", scope="local")
            for t in range(TILES):
                for i in T.unroll(ROWS):
                    acc[i] = B[r]
                for s in range(S):
                    for i in T.unroll(ROWS):
                        acc[i] = acc[i] + V[r, s] * load(X, t * ROWS + i, s // n * m + Q[r, s])
                for i in T.unroll(ROWS):
                    Y[t * ROWS + i, r] = act(acc[i])
            for row in range(TILES * ROWS, M):
                one[0] = B[r]
                for s in range(S):
                    one[0] = one[0] + V[r, s] * load(X, row, s // n * m + Q[r, s])
                Y[row, r] = act(one[0])

    return nm_linear


def softmax_kernel(rows: int, length: int):
    """Y[r, :] = softmax(X[r, :]) over the last axis: rows in parallel; per row the max, then
    e^(x - max) (polynomial exp) and its sum, then the scaling, every pass vectorized: the max
    and the sum are kept per lane (``LANES`` partial results) and combined at the end. A row
    with nothing above -3.4e38 (fully masked by -inf) gives zeros, not NaN: what exporters'
    ``Where(IsNaN(p), 0, p)`` after the softmax asks for, so that guard is dropped."""
    R, L, W = rows, length, LANES
    FULL = length // LANES * LANES

    @T.prim_func(s_tir=True)
    def softmax(X: T.Buffer((R, L), "float32"), Y: T.Buffer((R, L), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # Relax's reshape analysis expects a root block
            for c in T.parallel((R + ROW_CHUNK - 1) // ROW_CHUNK):
                part = T.decl_buffer((W,), "float32", scope="local")
                peak = T.decl_buffer((1,), "float32", scope="local")
                total = T.decl_buffer((1,), "float32", scope="local")
                for rr in range(ROW_CHUNK):
                    if c * ROW_CHUNK + rr < R:
                        r = c * ROW_CHUNK + rr
                        _lane_fold(part, peak, lambda i: X[r, i], T.max, T.float32(-3.4e38), L)
                        for i in range(FULL // W):
                            for w in T.vectorized(W):
                                Y[r, i * W + w] = fast_exp(X[r, i * W + w] - peak[0])
                        for i in range(FULL, L):
                            Y[r, i] = fast_exp(X[r, i] - peak[0])
                        _lane_fold(part, total, lambda i: Y[r, i], _add, T.float32(0), L)
                        total[0] = T.if_then_else(total[0] > T.float32(0), T.float32(1) / total[0], T.float32(0))
                        for i in T.vectorized(L):
                            Y[r, i] = Y[r, i] * total[0]

    return softmax


@T.macro
def _lane_fold(part, total, value, combine, start, length: int):
    """total[0] = combine over i < length of value(i), starting from ``start``: ``LANES`` partial
    results combined lane-wise over the row's full vectors (vectorized), then across lanes
    and with the leftover entries."""
    full = length // LANES * LANES
    for w in T.vectorized(LANES):
        part[w] = start
    for i in range(full // LANES):
        for w in T.vectorized(LANES):
            part[w] = combine(part[w], value(i * LANES + w))
    total[0] = start
    for w in range(LANES):
        total[0] = combine(total[0], part[w])
    for i in range(full, length):
        total[0] = combine(total[0], value(i))


def _add(a, b):
    return a + b


def layer_norm_kernel(rows: int, length: int, epsilon: float):
    """Y[r, :] = (X[r, :] - mean) / sqrt(var + ε) · γ + β over the last axis: rows in parallel;
    per row the mean, then the variance as the mean of squared deviations (two passes over the
    row, which is in L1), then the scaling; sums kept per lane (``LANES``) and combined at the end."""
    R, L, W = rows, length, LANES

    @T.prim_func(s_tir=True)
    def layer_norm(X: T.Buffer((R, L), "float32"), G: T.Buffer((L,), "float32"), B: T.Buffer((L,), "float32"),
                   Y: T.Buffer((R, L), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # Relax's reshape analysis expects a root block
            for c in T.parallel((R + ROW_CHUNK - 1) // ROW_CHUNK):
                part = T.decl_buffer((W,), "float32", scope="local")
                mean = T.decl_buffer((1,), "float32", scope="local")
                var = T.decl_buffer((1,), "float32", scope="local")
                for rr in range(ROW_CHUNK):
                    if c * ROW_CHUNK + rr < R:
                        r = c * ROW_CHUNK + rr
                        _lane_fold(part, mean, lambda i: X[r, i], _add, T.float32(0), L)
                        mean[0] = mean[0] / T.float32(L)
                        _lane_fold(part, var, lambda i: (X[r, i] - mean[0]) * (X[r, i] - mean[0]), _add,
                                   T.float32(0), L)
                        var[0] = T.float32(1) / T.sqrt(var[0] / T.float32(L) + T.float32(epsilon))
                        for i in T.vectorized(L):
                            Y[r, i] = (X[r, i] - mean[0]) * var[0] * G[i] + B[i]

    return layer_norm


def _plain_load(X, row, col):
    return X[row, col]


def _guarded_load(k_in: int):
    """X[row, col], or 0 past the last input column (blocks overhanging K)."""
    return lambda X, row, col: T.if_then_else(col < k_in, X[row, T.min(col, k_in - 1)], T.float32(0))
