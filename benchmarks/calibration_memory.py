"""Peak memory of calibrating SmolLM2-135M: does it stay flat as calibration data grows?

For each calibration size (windows of 512 tokens from the gensim enwiki articles, batches of
8), compiles SmolLM2 with SliceRowsColumns (ratio 0.25: Gram reducers on all 61 residual
stream values) then NMSparsity 2:4 Wanda (per-channel reducers on every linear input) and
records each pass's peak resident memory (the whole process, from the compile report), the
resident memory before the compile and the wall time. Streaming reducers keep one batch of
activations in memory, so the peak should not grow with the number of windows.

Usage: python benchmarks/calibration_memory.py [--windows 16 128] [--threads 2]
Writes results/calibration_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from common import write_results

import sparc
from sparc.eval import datasets, quality, zoo
from sparc.measure.memory import rss_bytes
from sparc.passes import NMSparsity, SliceRowsColumns

MB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads)))
        return
    runs = []
    for count in args.windows:  # each size in a fresh process, so baselines do not carry over
        done = subprocess.run([sys.executable, __file__, "--one", str(count), "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    write_results("calibration_memory", {"runs": runs}, _markdown(runs))


def measure(count: int, threads: int) -> dict:
    path = str(zoo.smollm2_onnx())
    tokenizer = zoo.smollm2().tokenizer
    windows = quality.token_windows(tokenizer, "\n\n".join(datasets.enwiki_articles()), window=512, count=count)
    calibration = [
        {"input_ids": np.concatenate(chunk), "attention_mask": np.ones((len(chunk), 512), np.int64)}
        for chunk in (windows[i : i + 8] for i in range(0, len(windows), 8))
    ]
    before = rss_bytes()
    start = time.perf_counter()
    compiled = sparc.compile(
        path, calibration=calibration,
        recipe=[SliceRowsColumns(ratio=0.25), NMSparsity(n=2, m=4, method="wanda")],
        threads=threads, latency_rounds=0,
    )
    return {
        "windows": count, "tokens": count * 512, "batches": len(calibration),
        "rss_before_mb": before / MB, "seconds": time.perf_counter() - start,
        "passes": {e.name: {"peak_rss_mb": e.peak_rss / MB, "seconds": e.seconds} for e in compiled.report.passes},
    }


def _markdown(runs) -> str:
    names = list(runs[0]["passes"])
    lines = [
        "# Calibration memory: SmolLM2-135M, windows of 512 tokens, batches of 8\n",
        "Peak resident memory of the whole process while each pass ran (calibration included), "
        "from the compile report.\n",
        "| windows | tokens | RSS before MB | " + " | ".join(f"{n} peak MB | {n} s" for n in names) + " |",
        "|---:|---:|---:|" + "---:|---:|" * len(names),
    ]
    for r in runs:
        cells = " | ".join(f"{r['passes'][n]['peak_rss_mb']:,.0f} | {r['passes'][n]['seconds']:.0f}" for n in names)
        lines.append(f"| {r['windows']} | {r['tokens']:,} | {r['rss_before_mb']:,.0f} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
