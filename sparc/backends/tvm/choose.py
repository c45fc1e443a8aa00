"""Per-layer choice of weight layout: time each candidate kernel here, keep the fastest.

Candidates for W[N, K]: ``dense`` always; ``bsr`` br×1 for br in 16, 8, 4 (br | N) when at most
70% of those blocks hold a non-zero (from 64 rows on also the rows-outer order, with 8- and
16-row tiles); ``bsr`` 1×1 at most 5% density; the rows-vectorized ``csr`` kernel for
unstructured sparsity at most 45% density from 16 rows on (N a multiple of 16); ``nm`` 2:4 /
4:8 when W satisfies it (and on AVX-512 targets also its lane-permute form); on AVX-512
targets the ``bitmap`` layout at most 70% density up to 8 rows (N a multiple of 16). Each
candidate kernel is compiled alone and timed on random X of the layer's real row count (median
of repeats). Up to 8 rows (decoding) a layer's time is reading its weight from DRAM: there
every call is timed after the weight, bias and output are flushed from the caches, as when
a model larger than the cache runs; from 9 rows on the weight stays in cache between calls.
A kernel's time depends on the layer's shape, rows, epilogue and the fraction of blocks
stored, not on where the blocks are, so timings are cached in ``$SPARC_CACHE/tvm-layouts.json``
under (kernel version, target, threads, shape, rows, activation, layout, stored fraction to
1%): the layers of a model that look alike are timed once, and recompiling measures nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm.target import codegen

from sparc.backends.tvm.kernels import LANES, PANEL, VERSION, Layout, linear_kernel, pack
from sparc.files import cache_dir, write_atomic

BLOCK_ROWS = (16, 8, 4)
MAX_BLOCK_DENSITY = 0.7
MAX_CSR_DENSITY = 0.05
NM_PATTERNS = ((2, 4), (4, 8))
HEURISTIC_BLOCK_DENSITY = 0.5
ROWS_OUTER_FROM = 64  # rows from which the rows-outer BSR loop order is also timed
MAX_ROWS_CSR_DENSITY = 0.45  # the rows-vectorized CSR kernel: at half density it only ties dense
CSR_FROM_ROWS = 16  # ... and it needs a full vector of rows
MAX_BITMAP_DENSITY = 0.7  # the bitmap kernel: it reads 4 bytes per non-zero plus 1/8 byte per weight
STREAMED_ROWS = 8  # up to this many rows: the bitmap candidate, and timings with the weights flushed
STREAMED_REPEATS = 40  # calls timed one by one, each after a cache flush
ROWS_OUTER_TILES = (8, 16)  # rows of X per register tile timed in that order


@dataclass
class Choice:
    """The layout kept for one layer and what every candidate measured (ms)."""

    shape: tuple[int, int]
    rows: int
    layout: Layout
    activation: str = "none"
    timings_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        times = ", ".join(f"{k} {v:.3f}" for k, v in self.timings_ms.items())
        measured = f"({times} ms)" if times else "(not timed)"
        epilogue = "" if self.activation == "none" else f" + {self.activation}"
        return f"{self.shape[0]}x{self.shape[1]}{epilogue} rows {self.rows}: {self.layout.describe()} {measured}"


def candidates(weight_nk: np.ndarray, rows: int = 1, lanes: bool = False) -> list[Layout]:
    """The layouts worth timing for W[N, K] applied to ``rows`` rows (module docstring);
    ``lanes``: the target has AVX-512 (the lane-permute N:M and bitmap kernels)."""
    nonzero = weight_nk != 0
    density = nonzero.mean()
    found = [Layout("dense")]
    n_out = weight_nk.shape[0]
    for br in BLOCK_ROWS:
        layout = Layout("bsr", (br, 1))
        if n_out % br == 0 and stored_fraction(weight_nk, layout) <= MAX_BLOCK_DENSITY:
            found.append(layout)
            if rows >= ROWS_OUTER_FROM:
                found += [Layout("bsr", (br, 1), order="rows", tile=tile) for tile in ROWS_OUTER_TILES]
    if density <= MAX_CSR_DENSITY:
        found.append(Layout("bsr", (1, 1)))
    if rows >= CSR_FROM_ROWS and n_out % LANES == 0 and density <= MAX_ROWS_CSR_DENSITY:
        found.append(Layout("csr"))
    if lanes and rows <= STREAMED_ROWS and n_out % LANES == 0 and density <= MAX_BITMAP_DENSITY:
        found.append(Layout("bitmap"))
    for n, m in NM_PATTERNS:
        if _is_nm(nonzero, n, m):
            found.append(Layout("nm", n=n, m=m))
            if lanes and n_out % LANES == 0:
                found.append(Layout("nm", n=n, m=m, order="lanes"))
            break
    return found


def choose_layout(weight_nk, rows: int, activation: str, target, *, threads: int, mode: str = "measure") -> Choice:
    """The layout for this layer. ``mode``: ``measure`` (fastest candidate here), ``heuristic``
    (for a machine we cannot run on: the largest br×1 block layout storing at most
    ``HEURISTIC_BLOCK_DENSITY`` of the blocks, else dense), ``dense``."""
    shape = tuple(weight_nk.shape)
    options = candidates(weight_nk, rows, lanes=has_avx512(target))
    if mode == "heuristic":
        return Choice(shape, rows, _heuristic(weight_nk, options), activation)
    if mode == "dense" or len(options) == 1:
        return Choice(shape, rows, Layout("dense"), activation)
    cache = load_timings()
    timings = {}
    for layout in options:
        key = _cache_key(weight_nk, rows, activation, layout, target, threads)
        if key not in cache:
            cache[key] = time_layout(weight_nk, rows, layout, activation, target)
            save_timings(cache)
        timings[layout.describe()] = cache[key]
    best = min(options, key=lambda layout: timings[layout.describe()])
    return Choice(shape, rows, best, activation, timings)


def has_avx512(target) -> bool:
    """Whether ``target`` (an LLVM CPU target) has AVX-512F, which the lane-permute N:M and bitmap
    kernels need."""
    try:
        return bool(codegen.target_has_features("avx512f", target))
    except Exception:  # a target LLVM cannot describe here (e.g. another triple's CPU)
        return False


def _heuristic(weight_nk, options: list[Layout]) -> Layout:
    for layout in options:
        if layout.format == "bsr" and layout.block[0] > 1 and stored_fraction(weight_nk, layout) <= HEURISTIC_BLOCK_DENSITY:
            return layout
    return Layout("dense")


def time_layout(weight_nk, rows: int, layout: Layout, activation: str, target) -> float:
    """Median ms of W[N, K] in ``layout`` on ``rows`` random rows (see :func:`time_kernel`)."""
    tensors = pack(weight_nk, layout)
    func = linear_kernel(rows, weight_nk.shape[1], weight_nk.shape[0], layout, tensors, activation)
    library = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    out_cols = tensors[0].shape[0] * PANEL if layout.format == "dense" else weight_nk.shape[0]
    x = np.random.default_rng(0).normal(size=(rows, weight_nk.shape[1])).astype(np.float32)
    return time_kernel(library, x, tensors, out_cols)


def time_kernel(library, x: np.ndarray, tensors: list[np.ndarray], out_cols: int) -> float:
    """Median ms of a linear kernel ``(X, *tensors, bias, Y)`` on ``x`` (see :func:`_timer`)."""
    device = tvm.cpu()
    args = [x, *tensors, np.zeros(out_cols, np.float32), np.zeros((x.shape[0], out_cols), np.float32)]
    timer = _timer(library, device, x.shape[0])
    return float(np.median(timer(*[tvm.runtime.tensor(a, device) for a in args]).results)) * 1e3


def _timer(library, device, rows: int):
    """Up to ``STREAMED_ROWS`` rows, one call per repeat after every argument but X is flushed
    from the caches (TVM's ``cache_flush_cpu_non_first_arg``): the weight streams from DRAM, as
    in decoding; otherwise batches of calls with the weight cache-resident."""
    if rows <= STREAMED_ROWS:
        return library.mod.time_evaluator("main", device, number=1, repeat=STREAMED_REPEATS,
                                          f_preproc="cache_flush_cpu_non_first_arg")
    return library.mod.time_evaluator("main", device, number=10, repeat=7, min_repeat_ms=20)


def _is_nm(nonzero: np.ndarray, n: int, m: int) -> bool:
    if nonzero.shape[1] % m:
        return False
    return bool(nonzero.reshape(nonzero.shape[0], -1, m).sum(axis=2).max(initial=0) <= n)


def stored_fraction(weight_nk: np.ndarray, layout: Layout) -> float:
    """The fraction of W a layout stores (blocks holding a non-zero, or n/m)."""
    if layout.format == "dense":
        return 1.0
    if layout.format == "nm":
        return layout.n / layout.m
    br = layout.block[0]
    return float((weight_nk != 0).reshape(weight_nk.shape[0] // br, br, -1).any(axis=1).mean())


def _cache_key(weight_nk, rows, activation, layout, target, threads) -> str:
    fill = round(stored_fraction(weight_nk, layout), 2)
    return (f"v{VERSION}|{target}|t{threads}|{weight_nk.shape}|rows{rows}|{activation}|"
            f"{layout.describe()}|fill{fill}")


def load_timings(name: str = "tvm-layouts.json") -> dict:
    """The timing cache ``$SPARC_CACHE/name`` (empty when missing or unreadable)."""
    try:
        return json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}


def save_timings(cache: dict, name: str = "tvm-layouts.json") -> None:
    write_atomic(cache_dir() / name, json.dumps(cache, indent=1))
