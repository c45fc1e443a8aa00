"""CPU schedule rules for the fused operators Relax leaves after legalization.

TVM 0.27 gives CPU functions no schedule by default (serial, scalar loops), and dlight's CPU
rules cover reductions (softmax, norms: ``dlight.cpu.Reduction``) and GEMV. sparc adds:

- ``RowReduction``: dlight's ``Reduction`` only where every block's leading spatial loops
  have the last block's extents. A one-row norm (decode) legalizes with its unit axes dropped
  from the reduction but not from the output's 576 columns, and dlight would compute the
  reduction once per output element (576² work); such functions get ``Unnested``.
- ``Unnested``: reductions followed by element-wise blocks over other axes: every block in
  its own loop nest, in order (reductions once, element-wise blocks parallel and vectorized).

- ``Injective``: all-spatial functions (element-wise, reshapes, transposes, gathers): inline
  every block into the last, fuse its loops, run chunks of it in parallel, vectorize the
  innermost chunk.
- ``SpatialReduction``: any other function whose blocks keep their spatial loops outside the
  reduction (sums, means, pooling): the spatial loops of its last block run in parallel
  chunks and every block is computed inside them.
- ``BatchMatmul``: one reduction block Y[..., i, j] += A[..., i, k]·B[..., k, j] (attention
  scores and context) plus element-wise epilogues: batch and i in parallel, k outside j, j
  vectorized, epilogues computed per row; with a reduction of at least 64 (attention context)
  rows × columns register tiles instead (up to 8 rows × 32 columns).

Linear layers with constant weights never reach these rules: sparc's own kernels
(``kernels.py``) replace them before legalization.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target.codegen import llvm_get_vector_width

PARALLEL_GRAIN = 4096  # fewer elements than this run on one thread
TILE_REGISTERS = 16  # accumulator vectors of a batched-matmul register tile
MIN_TILED_DEPTH = 64  # reduction length from which that tile is used


def rules() -> list:
    """The rules, tried in order on every unscheduled function."""
    return [BatchMatmul(), RowReduction(), dlight.cpu.GEMV(), Injective(), SpatialReduction(), Unnested()]


def unscheduled(mod) -> list[str]:
    """Names of the module's TIR functions no rule scheduled (they run serially)."""
    return sorted(gv.name_hint for gv, func in mod.functions.items()
                  if isinstance(func, tirx.PrimFunc) and "tirx.is_scheduled" not in func.attrs)


def _lanes(target) -> int:
    bits = llvm_get_vector_width(target)
    return max((bits if bits > 0 else 128) // 32, 4)


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _parallel_vectorize(sch: s_tir.Schedule, block, lanes: int, spatial: int | None = None) -> None:
    """Fuse the block's first ``spatial`` loops (all by default), parallel outer, vector inner;
    when the last of them is a whole number of vectors it is split on its own (contiguous
    vectors, no index arithmetic per lane: copies and concatenations along other axes)."""
    loops = sch.get_loops(block)
    loops = loops if spatial is None else loops[:spatial]
    last = _extent(sch, loops[-1])
    if len(loops) > 1 and last is not None and last % lanes == 0:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        _, inner = sch.split(loops[-1], factors=[None, lanes])
        sch.vectorize(inner)
        rows = _extent(sch, outer)
        if rows is None or rows * last >= PARALLEL_GRAIN:
            sch.parallel(outer)
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = _extent(sch, fused)
    if total is not None and total <= lanes:
        sch.vectorize(fused)
        return
    outer, inner = sch.split(fused, factors=[None, lanes])
    if total is None or total >= PARALLEL_GRAIN:
        sch.parallel(outer)
    sch.vectorize(inner)


class Injective(CPUScheduleRule):
    """Parallel, vectorized loops for functions with only spatial blocks."""

    def apply(self, func, target, _tunable):
        prepared = _inlined(self, func, target)
        if prepared is None:
            return None
        sch, blocks = prepared
        if len(blocks) != 1 or not blocks[0].is_injective():
            return None
        _parallel_vectorize(sch, blocks[0].block_rv, _lanes(target))
        return sch


def _inlined(rule: CPUScheduleRule, func, target):
    """(schedule, its blocks after inlining the element-wise ones) of a PrimFunc ``rule`` may
    schedule on ``target``, else None."""
    if not isinstance(func, tirx.PrimFunc) or not rule.is_target_available(target):
        return None
    sch = s_tir.Schedule(func)
    blocks = normalize_prim_func(sch)
    if not blocks:
        return None
    return sch, try_inline(sch, blocks)


def _leading_spatial(blocks) -> int:
    """The fewest leading spatial iterators of any block."""
    return min(len(b.dom_kind()) - len(b.dom_kind().lstrip("S")) for b in blocks)


def _leading_extents_agree(blocks, count: int) -> bool:
    """Whether every block's first ``count`` iterators have the last block's extents, so that
    computing each block under the last one's first ``count`` loops computes it once."""
    last = [str(i.dom) for i in blocks[-1].iters[:count]]
    return all([str(i.dom) for i in b.iters[:count]] == last for b in blocks)


class RowReduction(dlight.cpu.Reduction):
    """dlight's CPU reduction rule where its nesting computes each block once."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        blocks = normalize_prim_func(s_tir.Schedule(func))
        if not blocks or not _leading_extents_agree(blocks, _leading_spatial(blocks)):
            return None
        return super().apply(func, target, tunable)


class Unnested(CPUScheduleRule):
    """Every block in its own loop nest: reductions once each (leading spatial loops parallel
    when large), element-wise blocks parallel and vectorized."""

    def apply(self, func, target, _tunable):
        prepared = _inlined(self, func, target)
        if prepared is None:
            return None
        sch, blocks = prepared
        lanes = _lanes(target)
        try:
            for block in blocks:
                if block.is_injective():
                    _parallel_vectorize(sch, block.block_rv, lanes)
                else:
                    self._reduction(sch, block)
        except s_tir.ScheduleError:
            return None
        return sch

    @staticmethod
    def _reduction(sch: s_tir.Schedule, block) -> None:
        """Leading spatial loops fused and parallel when they hold ``PARALLEL_GRAIN`` or more."""
        spatial = _leading_spatial([block])
        if spatial == 0:
            return
        loops = sch.get_loops(block.block_rv)[:spatial]
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = _extent(sch, fused)
        if extent is not None and extent >= PARALLEL_GRAIN:
            sch.parallel(fused)


class SpatialReduction(CPUScheduleRule):
    """Parallel spatial loops around reductions that no other rule took."""

    def apply(self, func, target, _tunable):
        prepared = _inlined(self, func, target)
        if prepared is None:
            return None
        sch, blocks = prepared
        spatial = _leading_spatial(blocks)
        if spatial == 0 or not _leading_extents_agree(blocks, spatial):
            return None
        try:
            loops = sch.get_loops(blocks[-1].block_rv)[:spatial]
            outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            sch.parallel(outer)
            for block in reversed(blocks[:-1]):
                sch.compute_at(block.block_rv, outer, preserve_unit_loops=True)
        except s_tir.ScheduleError:
            return None
        return sch


class BatchMatmul(CPUScheduleRule):
    """Batched matmuls with constant-free operands, with optional element-wise epilogues."""

    def apply(self, func, target, _tunable):
        prepared = _inlined(self, func, target)
        if prepared is None:
            return None
        sch, blocks = prepared
        reductions = [b for b in blocks if not b.is_injective()]
        if len(reductions) != 1 or not reductions[0].dom_kind().endswith("SSR"):
            return None
        main = reductions[0]
        if blocks[0] is not main or any(not b.is_injective() for b in blocks[1:]):
            return None
        kind = main.dom_kind()
        if kind.count("R") != 1 or not kind.endswith("R"):
            return None
        lanes = _lanes(target)
        tiled = s_tir.Schedule(sch.mod)  # the register-tiled form where the sizes allow it
        try:
            if self._tiled(tiled, tiled.get_sblock(main.name), [tiled.get_sblock(e.name) for e in blocks[1:]], lanes):
                return tiled
        except s_tir.ScheduleError:
            pass
        try:
            self._schedule(sch, main, blocks[1:], lanes)
        except s_tir.ScheduleError:
            return None
        return sch

    @staticmethod
    def _tiled(sch, main, epilogues, lanes: int) -> bool:
        """Rows × columns register tiles (at most ``TILE_REGISTERS`` vectors of accumulators): per
        step of k, one vector load of B per column vector and one broadcast FMA per row."""
        *batch, row, col, red = sch.get_loops(main)
        rows, cols, depth = _extent(sch, row), _extent(sch, col), _extent(sch, red)
        if rows is None or cols is None or cols % lanes or depth is None or depth < MIN_TILED_DEPTH:
            return False  # a short reduction (attention scores: the head size) does not pay for the tile
        width = max(w for w in (4 * lanes, 2 * lanes, lanes) if cols % w == 0)
        tile = next((r for r in (8, 4, 2, 1) if r * width // lanes <= TILE_REGISTERS and rows % r == 0), 1)
        row_out, row_in = sch.split(row, factors=[None, tile])
        col_out, col_in = sch.split(col, factors=[None, width])
        sch.reorder(*batch, row_out, col_out, red, row_in, col_in)
        sch.parallel(sch.fuse(*batch, row_out) if batch else row_out)
        sch.unroll(row_in)
        sch.vectorize(col_in)
        for epilogue in epilogues:
            sch.reverse_compute_at(epilogue, col_out)
            inner = sch.get_loops(epilogue)[-1]
            if _extent(sch, inner) is not None and _extent(sch, inner) % lanes == 0:
                sch.vectorize(inner)
        sch.decompose_reduction(main, red)
        return True

    @staticmethod
    def _schedule(sch, main, epilogues, lanes: int) -> None:
        *batch, row, col, red = sch.get_loops(main.block_rv)
        sch.reorder(red, col)
        outer = sch.fuse(*batch, row) if batch else row
        sch.parallel(outer)
        for epilogue in epilogues:
            sch.reverse_compute_at(epilogue.block_rv, outer)
            inner = sch.get_loops(epilogue.block_rv)[1:]
            if inner:
                last = sch.fuse(*inner) if len(inner) > 1 else inner[0]
                _vectorize_by(sch, last, lanes)
        sch.decompose_reduction(main.block_rv, red)


def _vectorize_by(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorize ``lanes`` at a time when the loop's extent is a multiple of it."""
    extent = _extent(sch, loop)
    if extent is not None and extent % lanes == 0:
        _, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)
