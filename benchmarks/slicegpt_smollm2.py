"""SliceGPT on SmolLM2-135M: perplexity, parameters and ONNX Runtime prefill latency.

Calibration: 128 windows of 512 tokens from the gensim enwiki articles. Evaluation: the
first 16,384 tokens of the ovos Wikipedia leads (titles sorted), 32 windows of 512 (disjoint
text). Latency: batch 1 at sequence 128 and 512, 1 and 2 threads, each sliced model timed
side by side with the dense one (interleaved rounds, median ratio).

Usage: python benchmarks/slicegpt_smollm2.py [--ratios 0 0.1 0.2 0.25 0.3] [--calib 128]
Writes results/slicegpt_smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import write_results

import sparc
from sparc.eval import datasets, quality, zoo
from sparc.measure.latency import compare
from sparc.passes import SliceRowsColumns
from sparc.runtime import OrtRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.25, 0.3])
    parser.add_argument("--calib", type=int, default=128, help="calibration windows of 512")
    parser.add_argument("--eval", type=int, default=32, help="evaluation windows of 512")
    parser.add_argument("--rotation", nargs="+", default=["shared"], choices=["shared", "per_layer"])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    path = str(zoo.smollm2_onnx())
    tokenizer = zoo.smollm2().tokenizer
    calib_windows = quality.token_windows(
        tokenizer, "\n\n".join(datasets.enwiki_articles()), window=512, count=args.calib
    )
    calibration = [
        {"input_ids": np.concatenate(chunk), "attention_mask": np.ones((len(chunk), 512), np.int64)}
        for chunk in (calib_windows[i : i + 8] for i in range(0, len(calib_windows), 8))
    ]
    evaluation = quality.token_windows(tokenizer, datasets.wikipedia_leads(), window=512, count=args.eval)
    dense = OrtRunner(sparc.capture.load_onnx(path), threads=2)
    dense_ppl = quality.perplexity(lambda f: _first(dense.run(f)), evaluation)
    rows, data = [], []
    for rotation in args.rotation:
        for ratio in args.ratios:
            start = time.perf_counter()
            compiled = sparc.compile(
                path, calibration=calibration,
                recipe=[SliceRowsColumns(ratio=ratio, rotation=rotation)],
                threads=2, latency_rounds=0,
            )
            entry = compiled.report.passes[-1]
            seconds = time.perf_counter() - start
            ppl = quality.perplexity(compiled, evaluation)
            latency = _latency(compiled.model, compiled.original, args.rounds)
            record = {
                "rotation": rotation, "ratio": ratio, "perplexity": ppl,
                "params": entry.stats.params, "dense_params": compiled.report.original.params,
                "pass_seconds": entry.seconds, "compile_seconds": seconds,
                "details": entry.details, "latency": latency,
            }
            data.append(record)
            rows.append(_row(record))
            print(rows[-1], flush=True)
    header = (
        "# SliceGPT on SmolLM2-135M (ONNX Runtime, batch 1)\n\n"
        f"Dense perplexity {dense_ppl:.2f} ({args.eval} windows of 512 of the ovos Wikipedia "
        f"leads); calibration {args.calib} windows of 512 from the gensim enwiki articles.\n"
        "Latency: sliced / dense, same run, median of interleaved rounds.\n\n"
        "| rotation | slicing | perplexity | params | pass s | seq128 1t | seq128 2t | seq512 1t | seq512 2t |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    write_results("slicegpt_smollm2", {"dense_perplexity": dense_ppl, "runs": data}, header + "\n".join(rows) + "\n")


def _first(outputs: dict) -> np.ndarray:
    return next(iter(outputs.values()))


def _latency(sliced, dense, rounds) -> dict[str, float]:
    """sliced / dense latency ratio for each (sequence, threads)."""
    ratios = {}
    for threads in (1, 2):
        a, b = OrtRunner(dense, threads=threads), OrtRunner(sliced, threads=threads)
        for seq in (128, 512):
            feeds = {"input_ids": np.ones((1, seq), np.int64), "attention_mask": np.ones((1, seq), np.int64)}
            result = compare({"dense": lambda: a.run(feeds), "sliced": lambda: b.run(feeds)},
                             rounds=rounds, warmup=1, threads=threads)
            ratios[f"seq{seq}_t{threads}"] = result.ratios["sliced"]
            ratios[f"seq{seq}_t{threads}_dense_ms"] = result.timings["dense"].median_ms
    return ratios


def _row(r) -> str:
    lat = r["latency"]
    return (
        f"| {r['rotation']} | {r['ratio']:.0%} | {r['perplexity']:.2f} | "
        f"{r['params'] / 1e6:.1f}M ({r['params'] / r['dense_params']:.2f}x) | {r['pass_seconds']:.0f} | "
        f"{lat['seq128_t1']:.2f} | {lat['seq128_t2']:.2f} | {lat['seq512_t1']:.2f} | {lat['seq512_t2']:.2f} |"
    )


if __name__ == "__main__":
    main()
