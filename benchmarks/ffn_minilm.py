"""MLP-unit slicing (SliceRowsColumns target="ffn") on MiniLM-L6: quality and latency.

Calibration: 128 Lee background stories at 128 tokens. Quality: Pearson r of cosine
similarity against the 1,225 human-rated gensim Lee pairs (disjoint text). Latency: ONNX
Runtime, sequence 128, batch 1 and 8, 1 thread, sliced vs dense side by side.

Usage: python benchmarks/ffn_minilm.py [--ratios 0.25 0.5]
Writes results/ffn_minilm.{json,md}.
"""

from __future__ import annotations

import argparse

from common import write_results

import sparc
from sparc.eval import datasets, quality, zoo
from sparc.eval.quality import encoder
from sparc.measure.latency import compare
from sparc.passes import SliceRowsColumns
from sparc.runtime import OrtRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    minilm = zoo.minilm()
    calibration = minilm.batches(datasets.lee_background()[:128], 16, seq=128)
    rows, data = [], []
    dense_r = None
    for ratio in args.ratios:
        compiled = sparc.compile(
            minilm.module, example_inputs=zoo.torch_inputs(calibration[0]),
            dynamic_axes=minilm.dynamic_axes, calibration=calibration,
            recipe=[SliceRowsColumns(ratio=ratio, target="ffn")], threads=1, latency_rounds=0,
        )
        if dense_r is None:
            dense = OrtRunner(compiled.original, threads=1)
            dense_r = quality.lee_correlation(encoder(lambda f: next(iter(dense.run(f).values())), minilm))
        sliced_r = quality.lee_correlation(encoder(compiled, minilm))
        latency = {}
        for batch in (1, 8):
            feeds = minilm.make_inputs(datasets.lee_documents()[:batch], seq=128)
            result = compare({"dense": lambda: dense.run(feeds), "sliced": lambda: compiled.run(feeds)},
                             rounds=args.rounds, threads=1)
            latency[f"batch{batch}"] = result.ratios["sliced"]
        entry = compiled.report.passes[-1]
        record = {"ratio": ratio, "correlation": sliced_r, "dense_correlation": dense_r,
                  "params": entry.stats.params, "dense_params": compiled.report.original.params,
                  "macs_ratio": entry.stats.macs / compiled.report.original.macs, "latency": latency}
        data.append(record)
        rows.append(
            f"| {ratio:.0%} | {sliced_r:.4f} | {dense_r:.4f} | {record['params'] / 1e6:.2f}M | "
            f"{record['macs_ratio']:.2f} | {latency['batch1']:.2f} | {latency['batch8']:.2f} |"
        )
    table = ("# MiniLM-L6 MLP slicing (ONNX Runtime, 1 thread, seq 128)\n\n"
             "| slicing | Lee r | dense r | params | MACs ratio | latency b1 | latency b8 |\n"
             "|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    write_results("ffn_minilm", data, table)


if __name__ == "__main__":
    main()
