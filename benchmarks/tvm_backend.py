"""TVM backend: sparse kernels vs dense, and MiniLM end to end vs ONNX Runtime dense.

Kernels: every linear shape of MiniLM-L6 and SmolLM2-135M, M = 1, 16, 128 rows, 16x1 block
sparsity at density 0.5/0.3/0.2/0.1 (random block masks), each format (bsr 16x1, 8x1, 4x1,
1x1 with the same non-zeros, and 2:4 at density 0.5) timed against ONNX Runtime's dense MatMul
and sparc's dense TVM kernel in one process (interleaved rounds, median ratios), 1 and 2
threads.

End to end: MiniLM-L6 dense and with 16x1 blocks at 50/70/90% sparsity (BlockSparsity,
magnitude), compiled with backend="tvm" (fallback off), against the dense model in ONNX
Runtime, sequence 128, batch 1 and 8, 1 and 2 threads. Also: TVM compile time, and the
linear layers' speedup (dense TVM kernel time / chosen kernel time, from the per-layer
timings) against the FLOP-ideal 1/density.

Usage: python benchmarks/tvm_backend.py [--part kernels e2e] [--rounds 15]
Writes results/tvm_kernels.{json,md} and results/tvm_minilm.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import write_results
from linear_contestants import SHAPES, ort_matmul, tvm_linear, two_four_mask

import sparc
from sparc.backends.tvm import TvmRunner, make_target, set_threads
from sparc.backends.tvm.kernels import Layout
from sparc.eval import datasets, zoo
from sparc.measure.latency import compare
from sparc.passes import BlockSparsity
from sparc.runtime import OrtRunner

FORMATS = [Layout("bsr", (16, 1)), Layout("bsr", (8, 1)), Layout("bsr", (4, 1)), Layout("bsr", (1, 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["kernels", "e2e"], choices=["kernels", "e2e"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    if "kernels" in args.part:
        kernel_table(args.rounds, args.shapes)
    if "e2e" in args.part:
        minilm_end_to_end(args.rounds)


def kernel_table(rounds: int, shapes: list[str]) -> None:
    rng = np.random.default_rng(0)
    rows, data = [], []
    for threads in (1, 2):
        set_threads(threads)
        target = make_target("cpu", threads)
        for shape_name in shapes:
            k_in, n_out = SHAPES[shape_name]
            for m in (1, 16, 128):
                x = rng.normal(size=(m, k_in)).astype(np.float32)
                for density in (0.5, 0.3, 0.2, 0.1):
                    weight = _block_sparse(rng, n_out, k_in, density)
                    contestants = {"ort dense": ort_matmul(weight, x, threads),
                                   "tvm dense": tvm_linear(weight, x, Layout("dense"), target)}
                    layouts = FORMATS + ([Layout("nm", n=2, m=4)] if density == 0.5 else [])
                    for layout in layouts:
                        w = weight
                        if layout.format == "nm":
                            w = rng.normal(size=(n_out, k_in)).astype(np.float32) * two_four_mask(rng, n_out, k_in)
                        contestants[layout.describe()] = tvm_linear(w, x, layout, target)
                    result = compare(contestants, rounds=rounds, warmup=2, threads=threads)
                    ratios = {k: result.ratios[k] for k in contestants if k != "ort dense"}
                    record = {"shape": shape_name, "k": k_in, "n": n_out, "m": m, "density": density,
                              "threads": threads, "ort_dense_ms": result.timings["ort dense"].median_ms,
                              "ratio_vs_ort_dense": ratios,
                              "ratio_vs_tvm_dense": {k: result.timings[k].median_ms / result.timings["tvm dense"].median_ms
                                                     for k in contestants if k not in ("ort dense", "tvm dense")}}
                    data.append(record)
                    rows.append(_kernel_row(record))
                    print(rows[-1], flush=True)
    header = ("# sparc TVM kernels vs dense (time ratio, lower is faster)\n\n"
              "Each cell: kernel time / ONNX Runtime dense MatMul time, same process, interleaved "
              "rounds, medians. 2:4 only at density 0.5 (its own random 2:4 weight).\n\n"
              "| shape | M | density | threads | ORT dense ms | tvm dense | bsr 16x1 | bsr 8x1 | bsr 4x1 | bsr 1x1 | 2:4 |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    write_results("tvm_kernels", data, header + "\n".join(rows) + "\n")


def minilm_end_to_end(rounds: int) -> None:
    minilm = zoo.minilm()
    calibration = minilm.batches(datasets.lee_background()[:64], 8, seq=128)
    example = zoo.torch_inputs(calibration[0])
    dense_model = sparc.capture.capture(minilm.module, example_inputs=example, dynamic_axes=minilm.dynamic_axes)
    rows, data = [], []
    for sparsity in (0.0, 0.5, 0.7, 0.9):
        recipe = [BlockSparsity(block=(16, 1), density=1 - sparsity)] if sparsity else []
        compiled = sparc.compile(dense_model, calibration=calibration, recipe=recipe, latency_rounds=0)
        model = compiled.model
        record = {"sparsity": sparsity, "latency": {}, "compile_seconds": {}, "linear": {}}
        for threads in (1, 2):
            set_threads(threads)
            ort_dense = OrtRunner(dense_model, threads=threads)
            runner = TvmRunner(model, threads=threads)
            for batch in (1, 8):
                feeds = minilm.make_inputs(datasets.lee_documents()[:batch], seq=128)
                start = time.perf_counter()
                runner.prepare({k: v.shape for k, v in feeds.items()})
                record["compile_seconds"][f"b{batch}_t{threads}"] = time.perf_counter() - start
                record["linear"][f"b{batch}_t{threads}"] = _linear_speedup(runner.choices)
                ours, theirs = runner.run(feeds), OrtRunner(model, threads=threads).run(feeds)
                diff = float(max(np.abs(ours[k] - theirs[k]).max() for k in theirs))
                record["max_abs_diff_vs_ort"] = max(record.get("max_abs_diff_vs_ort", 0.0), diff)
                result = compare({"ort dense": lambda: ort_dense.run(feeds), "tvm": lambda: runner.run(feeds)},
                                 rounds=rounds, warmup=2, threads=threads)
                record["latency"][f"b{batch}_t{threads}"] = {
                    "ort_dense_ms": result.timings["ort dense"].median_ms, "tvm_ms": result.timings["tvm"].median_ms,
                    "speedup": 1 / result.ratios["tvm"]}
        data.append(record)
        rows.append(_e2e_row(record))
        print(rows[-1], flush=True)
    header = ("# MiniLM-L6 through the TVM backend vs dense ONNX Runtime (seq 128)\n\n"
              "Speedup = ORT dense time / TVM time (same process, interleaved rounds). Linear: "
              "dense-kernel time / chosen-kernel time summed over the 36 linear layers, and that "
              "over the FLOP-ideal 1/density. Compile: TVM backend seconds for that shape "
              "(layout timings cached across shapes/threads of equal keys).\n\n"
              "| sparsity | b1 1t | b8 1t | b1 2t | b8 2t | linear speedup b8 1t | of ideal | compile s (b1, 1t) |\n"
              "|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    write_results("tvm_minilm", data, header + "\n".join(rows) + "\n")


def _block_sparse(rng, n_out, k_in, density):
    weight = rng.normal(size=(n_out, k_in)).astype(np.float32)
    return weight * np.repeat(rng.random((n_out // 16, k_in)) < density, 16, axis=0)


def _linear_speedup(choices) -> dict:
    dense = sum(c.timings_ms.get("dense", 0.0) for c in choices)
    chosen = sum(c.timings_ms.get(c.layout.describe(), 0.0) for c in choices)
    if not chosen or not dense:
        return {"speedup": 1.0}
    return {"speedup": dense / chosen, "dense_ms": dense, "chosen_ms": chosen}


def _kernel_row(r) -> str:
    ratios = r["ratio_vs_ort_dense"]
    cells = [f"{ratios[k]:.2f}" if k in ratios else "" for k in ("tvm dense", "bsr 16x1", "bsr 8x1", "bsr 4x1", "bsr 1x1", "2:4")]
    return (f"| {r['shape']} ({r['k']}→{r['n']}) | {r['m']} | {r['density']} | {r['threads']} | "
            f"{r['ort_dense_ms']:.3f} | " + " | ".join(cells) + " |")


def _e2e_row(r) -> str:
    lat = r["latency"]
    ideal = 1 / (1 - r["sparsity"])
    linear = r["linear"]["b8_t1"]["speedup"]
    return (f"| {r['sparsity']:.0%} | {lat['b1_t1']['speedup']:.2f}x | {lat['b8_t1']['speedup']:.2f}x | "
            f"{lat['b1_t2']['speedup']:.2f}x | {lat['b8_t2']['speedup']:.2f}x | {linear:.2f}x | "
            f"{linear / ideal:.2f} | {r['compile_seconds']['b1_t1']:.0f} |")


if __name__ == "__main__":
    main()
