"""Decode attention kernels that read a grouped-query KV cache in place (TVMScript, TVM 0.27).

Exporters write grouped-query attention (``heads`` query heads sharing ``kv_heads`` key/value
heads, g = heads / kv_heads) by repeating every key/value head g times
(``expand_dims`` → ``broadcast_to`` → ``reshape``) and, for the keys, transposing the copy
before the matmuls. At a few query rows (decode) those copies of the whole cache cost more
than the matmuls. These kernels index the cache itself, head h reading kv head h // g:

- ``grouped_scores_kernel``: S[b, h, i, j] = Σ_k Q[b, h, i, k] · K[b, h // g, j, k]; one dot
  product per (h, i, j) over the contiguous k in ``LANES`` partial sums, added up by halving.
- ``grouped_context_kernel``: O[b, h, i, :] = Σ_j P[b, h, i, j] · V[b, h // g, j, :]; per
  (b, h, i) an accumulator row of ``depth`` lanes, each cache row added with one broadcast FMA.

Both run the (batch, head, row) triples in parallel.
"""

from __future__ import annotations

from tvm.script import tirx as T

from sparc.backends.tvm.kernels import LANES

MAX_ROWS = 8  # query rows up to which these kernels replace the repeated-cache matmuls


def fits(rows: int, depth: int) -> bool:
    """Whether the kernels take this shape: at most ``MAX_ROWS`` query rows, a head size that is
    a whole number of vectors (of 16 lanes: the scores kernel halves 16 partial sums)."""
    return rows <= MAX_ROWS and depth % LANES == 0 and LANES == 16


def grouped_scores_kernel(batch: int, heads: int, kv_heads: int, rows: int, length: int, depth: int):
    """S[b, h, i, j] = Σ_k Q[b, h, i, k] · K[b, h // g, j, k] (g = heads / kv_heads)."""
    B, H, R, L, D, W = batch, heads, rows, length, depth, LANES
    group = heads // kv_heads

    @T.prim_func(s_tir=True)
    def scores(Q: T.Buffer((B, H, R, D), "float32"), K: T.Buffer((B, kv_heads, L, D), "float32"),
               S: T.Buffer((B, H, R, L), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            for task in T.parallel(B * H * R):
                part = T.decl_buffer((W,), "float32", scope="local")
                b = task // (H * R)
                h = task // R % H
                i = task % R
                for j in range(L):
                    for w in T.vectorized(W):
                        part[w] = Q[b, h, i, w] * K[b, h // group, j, w]
                    for c in range(1, D // W):
                        for w in T.vectorized(W):
                            part[w] = part[w] + Q[b, h, i, c * W + w] * K[b, h // group, j, c * W + w]
                    for w in T.vectorized(W // 2):  # Σ part by halving (W = 16 lanes)
                        part[w] = part[w] + part[w + W // 2]
                    for w in T.vectorized(W // 4):
                        part[w] = part[w] + part[w + W // 4]
                    for w in T.vectorized(W // 8):
                        part[w] = part[w] + part[w + W // 8]
                    S[b, h, i, j] = part[0] + part[1]

    return scores


def grouped_context_kernel(batch: int, heads: int, kv_heads: int, rows: int, length: int, depth: int):
    """O[b, h, i, d] = Σ_j P[b, h, i, j] · V[b, h // g, j, d] (g = heads / kv_heads)."""
    B, H, R, L, D = batch, heads, rows, length, depth
    group = heads // kv_heads

    @T.prim_func(s_tir=True)
    def context(P: T.Buffer((B, H, R, L), "float32"), V: T.Buffer((B, kv_heads, L, D), "float32"),
                O: T.Buffer((B, H, R, D), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            for task in T.parallel(B * H * R):
                acc = T.decl_buffer((D,), "float32", scope="local")
                b = task // (H * R)
                h = task // R % H
                i = task % R
                for d in T.vectorized(D):
                    acc[d] = T.float32(0)
                for j in range(L):
                    for d in T.vectorized(D):
                        acc[d] = acc[d] + P[b, h, i, j] * V[b, h // group, j, d]
                for d in T.vectorized(D):
                    O[b, h, i, d] = acc[d]

    return context
