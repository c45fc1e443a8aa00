"""The input-sparse (activation sparsity) kernel at decode, weights streamed past the cache.

M = 1 on SmolLM2-135M's linear shapes W[K, N] (576×576, 576×192, 576×1536, 1536×576). The input
x is thresholded at its own |x| quantile, so exactly 40 / 50 / 60% of its entries are zeroed.
Each call reads the next of enough copies of W to exceed the last-level cache twice (as
decoding a model larger than the cache does; ``kernel_limits.py``'s streamed regime).
Contestants: ONNX Runtime's dense MatMul (the baseline), sparc's dense TVM kernel, the
input-sparse kernel over dense rows at each fraction; and with a weight that also has 16×1
blocks at density 0.5: sparc's BSR 16×1 kernel (weight sparsity alone) and the combined
input-sparse kernel over 16-output blocks at 50% input sparsity. Roofline: dense bytes / bytes
the kernel reads. Interleaved rounds, median of per-round ratios to ORT dense.

Usage: python benchmarks/activation_sparsity_kernel.py [--rounds 9] [--threads 1]
Writes results/activation_sparsity_kernel{_tN}.{json,md}.
"""

from __future__ import annotations

import argparse

import numpy as np
import tvm
from common import write_results
from kernel_limits import _copies_beyond_cache, _cycle
from linear_contestants import SHAPES, ort_matmul, tvm_linears

from sparc.backends.tvm import input_sparse, make_target, set_threads
from sparc.backends.tvm.input_sparse import InputSparseLayout
from sparc.backends.tvm.kernels import Layout
from sparc.measure.latency import compare

DECODE_SHAPES = ["smollm2 qo", "smollm2 kv", "smollm2 up", "smollm2 down"]
FRACTIONS = (0.4, 0.5, 0.6)
BLOCK_DENSITY = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    target = make_target("cpu", args.threads)
    records = [shape_record(name, target, args.threads, args.rounds) for name in DECODE_SHAPES]
    suffix = "" if args.threads == 1 else f"_t{args.threads}"
    write_results(f"activation_sparsity_kernel{suffix}", records, markdown(records, args.threads))


def shape_record(name: str, target, threads: int, rounds: int) -> dict:
    """Every contestant on one shape, streamed (module docstring)."""
    k_in, n_out = SHAPES[name]
    rng = np.random.default_rng(0)
    copies = _copies_beyond_cache()(4 * k_in * n_out)
    x = rng.normal(size=(1, k_in)).astype(np.float32)
    dense = [rng.normal(size=(k_in, n_out)).astype(np.float32) for _ in range(copies)]
    mask = np.repeat(rng.random((k_in, n_out // 16)) < BLOCK_DENSITY, 16, axis=1)  # 16x1 blocks of W[N, K]
    blocky = [w * mask for w in dense]
    contestants = {"ort dense": _cycle([ort_matmul(w.T, x, threads) for w in dense]),
                   "tvm dense": _cycle(tvm_linears([w.T for w in dense], x, Layout("dense"), target))}
    roofline = {}
    for fraction in FRACTIONS:
        label = f"input-sparse {fraction:.0%}"
        contestants[label] = _cycle(input_sparse_calls(dense, x, fraction, InputSparseLayout("rows"), target, threads))
        roofline[label] = 1 / (1 - fraction)
    contestants["bsr 16x1 d0.5"] = _cycle(tvm_linears([w.T for w in blocky], x, Layout("bsr", (16, 1)), target))
    combined = "input-sparse 50% + 16x1 d0.5"
    contestants[combined] = _cycle(input_sparse_calls(blocky, x, 0.5, InputSparseLayout("blocks"), target, threads))
    roofline["bsr 16x1 d0.5"] = 1 / mask.mean()
    roofline[combined] = 1 / (0.5 * mask.mean())
    result = compare(contestants, rounds=rounds, warmup=2, threads=threads, min_round_seconds=0.05)
    record = {"shape": name, "k": k_in, "n": n_out, "copies": copies,
              "times_ms": {k: t.median_ms for k, t in result.timings.items()},
              "speedup_vs_ort_dense": {k: 1 / r for k, r in result.ratios.items()},
              "speedup_vs_tvm_dense": _speedups_over(result, "tvm dense"), "roofline": roofline}
    print(name, {k: round(v, 2) for k, v in record["speedup_vs_ort_dense"].items()}, flush=True)
    return record


def _speedups_over(result, baseline: str) -> dict[str, float]:
    """Median over rounds of the baseline's time / each contestant's."""
    base = result.timings[baseline].samples
    return {k: float(np.median(np.array(base) / np.array(t.samples))) for k, t in result.timings.items()}


def input_sparse_calls(weights: list[np.ndarray], x: np.ndarray, fraction: float, layout, target, threads: int):
    """One compiled input-sparse kernel zeroing ``fraction`` of x, one call per weight W[K, N]."""
    k_in, n_out = weights[0].shape
    threshold = float(np.quantile(np.abs(x), fraction))
    func = input_sparse.input_sparse_kernel(1, k_in, n_out, threshold, "none", layout,
                                            input_sparse.pack(weights[0], layout), tasks=threads)
    run = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)["main"]
    cols = input_sparse.padded_columns(n_out)
    calls = []
    for weight in weights:
        args = [tvm.runtime.tensor(a) for a in (x, *input_sparse.pack(weight, layout), np.zeros(cols, np.float32),
                                                 np.zeros((1, cols), np.float32))]
        calls.append(lambda args=args: run(*args))
    return calls


def markdown(records: list[dict], threads: int) -> str:
    names = [n for n in records[0]["times_ms"] if n != "ort dense"]
    lines = [f"# Input-sparse kernel at decode (M = 1, {threads} thread(s), weights streamed past the cache)", "",
             "Speed-up vs ONNX Runtime dense MatMul / vs sparc's TVM dense kernel (roofline: dense bytes / "
             "bytes read).", "",
             "| shape | copies | ORT dense ms | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for r in records:
        cells = [f"{r['speedup_vs_ort_dense'][n]:.2f}x / {r['speedup_vs_tvm_dense'][n]:.2f}x"
                 + (f" ({r['roofline'][n]:.2f})" if n in r["roofline"] else "") for n in names]
        lines.append(f"| {r['shape']} ({r['k']}×{r['n']}) | {r['copies']} | {r['times_ms']['ort dense']:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
