"""MiniLM-L6 in ONNX Runtime (as captured by sparc) against torch eager, side by side.

Usage: python benchmarks/minilm_runtime.py [--seq 128 512] [--threads 1 2] [--rounds 20]
Writes results/minilm_runtime.{json,md}.
"""

from __future__ import annotations

import argparse

from common import write_results

from sparc.eval import datasets
from sparc.eval.bench_models import runner_for, zoo_model
from sparc.measure.latency import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    minilm = zoo_model("minilm")
    rows, data = [], []
    for threads in args.threads:
        runners = {"torch eager": runner_for("torch:minilm", threads=threads),
                   "onnxruntime": runner_for("zoo:minilm", threads=threads)}
        for seq in args.seq:
            feeds = minilm.make_inputs(datasets.lee_background()[:1], seq=seq)
            result = compare({k: (lambda r=r: r(feeds)) for k, r in runners.items()},
                             rounds=args.rounds, threads=threads, label=f"seq {seq}")
            data.append({"seq": seq, **result.to_dict()})
            t = result.timings
            rows.append(f"| {seq} | {threads} | {t['torch eager'].median_ms:.1f} | "
                        f"{t['onnxruntime'].median_ms:.1f} | {result.ratios['onnxruntime']:.3f} |")
    table = ("# MiniLM-L6 latency, batch 1: ONNX Runtime vs torch eager (same process)\n\n"
             "| seq | threads | torch ms | ORT ms | ORT / torch |\n|---:|---:|---:|---:|---:|\n"
             + "\n".join(rows) + "\n")
    write_results("minilm_runtime", data, table)


if __name__ == "__main__":
    main()
