"""Linear-layer kernels against their limits: FLOP-ideal at many rows, bytes at one row.

Part ``rows`` (M = 128, the prefill of one 128-token sequence): every linear shape of MiniLM-L6
and SmolLM2-135M at density 0.1, 16×1 blocks (each BSR variant: panels outer, rows outer with 8-
and 16-row tiles) and unstructured (the rows-vectorized CSR kernel), against ONNX Runtime's dense
MatMul and sparc's dense TVM kernel. "of ideal" = (best dense time / sparse time) × density:
1.0 would mean the sparse kernel is as efficient per multiply-add as the faster dense one.

Part ``decode`` (M = 1, 4, 8 rows: a batch of 1 to 8 sequences decoding): SmolLM2's shapes with
2:4 (both N:M kernels), 50% unstructured (the 1×1 BSR kernel, i.e. CSR with int32 columns, and
the AVX-512 bitmap kernel on a random mask and on a magnitude mask: |W| above its median, W
drawn with log-normal row and column scales as trained layers have) and 16×1 blocks at density
0.5, in two regimes: ``warm`` (one copy of the weight, which stays in cache between calls) and
``streamed`` (each call reads the next of enough copies to exceed the last-level cache twice,
as decoding a model larger than the cache does); 4 and 8 rows streamed only. The roofline
column is the dense bytes over the format's stored bytes: the most a memory-bound kernel can
gain.

Each table row is one ``compare`` (interleaved rounds, median of per-round ratios, ratio to ORT
dense), 1 thread unless ``--threads``.

Usage: python benchmarks/kernel_limits.py [--part rows decode] [--decode-rows 1 4 8] [--rounds 9] [--threads 1]
Writes results/kernel_limits.{json,md} (results/kernel_limits_<part>.{json,md} when one part runs).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from common import write_results
from linear_contestants import SHAPES, ort_matmul, tvm_linear, tvm_linears, two_four_mask

from sparc.backends.tvm import kernels, make_target, set_threads
from sparc.backends.tvm.kernels import Layout
from sparc.measure.latency import compare

DECODE_SHAPES = ["smollm2 qo", "smollm2 kv", "smollm2 up", "smollm2 down"]
BLOCK_LAYOUTS = [Layout("bsr", (16, 1)), Layout("bsr", (16, 1), order="rows"),
                 Layout("bsr", (16, 1), order="rows", tile=16)]
DECODE_LAYOUTS = {"2:4": Layout("nm", n=2, m=4), "2:4 lanes": Layout("nm", n=2, m=4, order="lanes"),
                  "unstructured 0.5 (csr 1x1)": Layout("bsr", (1, 1)), "bitmap 0.5 random": Layout("bitmap"),
                  "bitmap 0.5 magnitude": Layout("bitmap"), "16x1 d0.5": Layout("bsr", (16, 1))}
MASK_OF = {"2:4 lanes": "2:4", "bitmap 0.5 random": "unstructured 0.5 (csr 1x1)"}  # contestants sharing a mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["rows", "decode"], choices=["rows", "decode"])
    parser.add_argument("--decode-rows", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    target = make_target("cpu", args.threads)
    data, lines = {}, ["# Linear-layer kernels against their limits", ""]
    if "rows" in args.part:
        data["rows"] = rows_table(target, args.threads, args.rounds)
        lines += _rows_markdown(data["rows"], args.threads)
    if "decode" in args.part:
        data["decode"] = [r for m in args.decode_rows for r in decode_table(target, args.threads, args.rounds, m)]
        lines += _decode_markdown(data["decode"], args.threads)
    name = "kernel_limits" if len(set(args.part)) == 2 else f"kernel_limits_{args.part[0]}"
    write_results(name, data, "\n".join(lines) + "\n")


def rows_table(target, threads: int, rounds: int, m: int = 128, density: float = 0.1) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for name, (k_in, n_out) in SHAPES.items():
        x = rng.normal(size=(m, k_in)).astype(np.float32)
        dense = rng.normal(size=(n_out, k_in)).astype(np.float32)
        blocks = dense * np.repeat(rng.random((n_out // 16, k_in)) < density, 16, axis=0)
        scattered = dense * (rng.random(dense.shape) < density)
        contestants = {"ort dense": ort_matmul(dense, x, threads),
                       "tvm dense": tvm_linear(dense, x, Layout("dense"), target)}
        for layout in BLOCK_LAYOUTS:
            contestants[layout.describe()] = tvm_linear(blocks, x, layout, target)
        contestants["csr (unstructured)"] = tvm_linear(scattered, x, Layout("csr"), target)
        result = compare(contestants, rounds=rounds, warmup=2, threads=threads, min_round_seconds=0.05)
        times = {k: t.median_ms for k, t in result.timings.items()}
        best_dense = min(times["ort dense"], times["tvm dense"])
        best_block = min(times[layout.describe()] for layout in BLOCK_LAYOUTS)
        records.append({"shape": name, "k": k_in, "n": n_out, "m": m, "density": density, "times_ms": times,
                        "speedup_vs_ort_dense": _speedups(result),
                        "block_of_ideal": best_dense / best_block * density,
                        "csr_of_ideal": best_dense / times["csr (unstructured)"] * density})
        print(records[-1]["shape"], f"16x1 of ideal {records[-1]['block_of_ideal']:.2f}",
              f"csr of ideal {records[-1]['csr_of_ideal']:.2f}", flush=True)
    return records


def decode_table(target, threads: int, rounds: int, m: int = 1) -> list[dict]:
    rng = np.random.default_rng(1)
    copies_for = _copies_beyond_cache()
    records = []
    for name, regime in itertools.product(DECODE_SHAPES, ("warm", "streamed") if m == 1 else ("streamed",)):
        k_in, n_out = SHAPES[name]
        copies = 1 if regime == "warm" else copies_for(4 * k_in * n_out)
        x = rng.normal(size=(m, k_in)).astype(np.float32)
        dense = [rng.normal(size=(n_out, k_in)).astype(np.float32) for _ in range(copies)]
        masks = {"2:4": two_four_mask(rng, n_out, k_in), "unstructured 0.5 (csr 1x1)": rng.random((n_out, k_in)) < 0.5,
                 "bitmap 0.5 magnitude": _magnitude_mask(rng, n_out, k_in),
                 "16x1 d0.5": np.repeat(rng.random((n_out // 16, k_in)) < 0.5, 16, axis=0)}
        patterns = {label: [w * mask for w in dense] for label, mask in masks.items()}  # one mask: one kernel
        contestants = {"ort dense": _cycle([ort_matmul(w, x, threads) for w in dense]),
                       "tvm dense": _cycle(tvm_linears(dense, x, Layout("dense"), target))}
        stored = {"dense": 4 * k_in * n_out}
        for label, layout in DECODE_LAYOUTS.items():
            weights = patterns[MASK_OF.get(label, label)]
            contestants[label] = _cycle(tvm_linears(weights, x, layout, target))
            stored[label] = sum(t.nbytes for t in kernels.pack(weights[0], layout))
        result = compare(contestants, rounds=rounds, warmup=2, threads=threads, min_round_seconds=0.05)
        records.append({"shape": name, "k": k_in, "n": n_out, "m": m, "regime": regime, "copies": copies,
                        "times_ms": {k: t.median_ms for k, t in result.timings.items()},
                        "speedup_vs_ort_dense": _speedups(result),
                        "roofline": {k: stored["dense"] / v for k, v in stored.items() if k != "dense"}})
        print(name, f"M={m}", regime, {k: round(v, 2) for k, v in records[-1]["speedup_vs_ort_dense"].items()},
              flush=True)
    return records


def _magnitude_mask(rng, n_out: int, k_in: int) -> np.ndarray:
    """|W| above its median for W = N(0, 1) scaled by log-normal row and column factors (σ = 0.5),
    so rows and input columns keep uneven shares of the weight, as magnitude pruning of a
    trained layer leaves them."""
    scaled = rng.normal(size=(n_out, k_in)) * rng.lognormal(0, 0.5, (n_out, 1)) * rng.lognormal(0, 0.5, k_in)
    return np.abs(scaled) > np.median(np.abs(scaled))


def _speedups(result) -> dict:
    """ORT dense time / contestant time (``compare``'s ratios are contestant / baseline)."""
    return {name: 1 / ratio for name, ratio in result.ratios.items()}


def _copies_beyond_cache():
    """How many copies of a weight of b bytes exceed twice the last-level cache."""
    size = 128 << 20
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        text = (index / "size").read_text().strip()
        size = int(text[:-1]) << {"K": 10, "M": 20}[text[-1]] if text[-1] in "KM" else int(text)
    return lambda nbytes: max(2, -(-2 * size // nbytes))


def _cycle(runs):
    state = itertools.cycle(runs)
    return lambda: next(state)()


def _rows_markdown(records, threads) -> list[str]:
    lines = [f"## Many rows: M = 128, density 0.1, {threads} thread(s)", "",
             "Speed-up vs ORT dense; of ideal = (faster dense time / sparse time) × 0.1.", "",
             "| shape | ORT dense ms | TVM dense | best 16x1 | 16x1 of ideal | csr (unstructured) | csr of ideal |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        s = r["speedup_vs_ort_dense"]
        best = max(s[layout.describe()] for layout in BLOCK_LAYOUTS)
        lines.append(f"| {r['shape']} ({r['k']}→{r['n']}) | {r['times_ms']['ort dense']:.3f} | "
                     f"{s['tvm dense']:.2f}x | {best:.2f}x | {r['block_of_ideal']:.2f} | "
                     f"{s['csr (unstructured)']:.2f}x | {r['csr_of_ideal']:.2f} |")
    total = {k: sum(r["times_ms"][k] for r in records) for k in records[0]["times_ms"]}
    dense = min(total["ort dense"], total["tvm dense"])
    block = min(total[layout.describe()] for layout in BLOCK_LAYOUTS)
    lines += ["", f"All shapes together: 16x1 {dense / block * 0.1:.2f} of ideal, "
              f"csr {dense / total['csr (unstructured)'] * 0.1:.2f} of ideal.", ""]
    return lines


def _decode_markdown(records, threads) -> list[str]:
    names = ["tvm dense", *DECODE_LAYOUTS]
    lines = [f"## Decode: M = 1 to 8 rows, {threads} thread(s)", "",
             "Speed-up vs ORT dense (roofline: dense bytes / stored bytes).", "",
             "| shape | M | regime | ORT dense ms | " + " | ".join(names) + " |",
             "|---|---:|---|---:|" + "---:|" * len(names)]
    for r in records:
        cells = [f"{r['speedup_vs_ort_dense'][n]:.2f}x" + (f" ({r['roofline'][n]:.2f})" if n in r["roofline"] else "")
                 for n in names]
        lines.append(f"| {r['shape']} ({r['k']}→{r['n']}) | {r['m']} | {r['regime']} ({r['copies']} copies) | "
                     f"{r['times_ms']['ort dense']:.3f} | " + " | ".join(cells) + " |")
    return lines + [""]


if __name__ == "__main__":
    main()
