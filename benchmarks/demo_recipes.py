"""The recipes the demo could use on MiniLM-L6, measured the way the demo measures them.

Each recipe is compiled on the same capture and calibration as ``sparc demo`` and measured
with its protocol (``sparc.demo``): embedding cosine to the original and Lee r on the 50
rated Lee documents, latency in ONNX Runtime at 1 thread, batch 1, 128 tokens, timed side by
side with the original. The demo's ``CANDIDATES`` are picked from this table.

Usage: python benchmarks/demo_recipes.py [--only NAME ...]
Writes results/demo_recipes.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses

from common import write_results

from sparc import demo
from sparc.passes import ChannelCrop, SliceRowsColumns

HEADS, FFN = demo.HEADS, demo.FFN


def crop(heads: float, ffn: float, importance: str = "activation", refine: bool = True) -> list:
    ratio = {p: r for p, r in ((HEADS, heads), (FFN, ffn)) if r}
    return [ChannelCrop(ratio=ratio, importance=importance, bias_compensation=refine, reconstruct=refine,
                        round_to=1 if heads else 8)]


RECIPES = {
    "FFN slicing 25%": lambda: [SliceRowsColumns(target="ffn", ratio=0.25)],
    "FFN slicing 50%": lambda: [SliceRowsColumns(target="ffn", ratio=0.5)],
    "ChannelCrop FFN 15%": lambda: crop(0, 0.15),
    "ChannelCrop FFN 20%": lambda: crop(0, 0.2),
    "ChannelCrop FFN 25%": lambda: crop(0, 0.25),
    "ChannelCrop FFN 50%": lambda: crop(0, 0.5),
    "ChannelCrop FFN 50% l2, no refinement": lambda: crop(0, 0.5, "l2", False),
    "ChannelCrop FFN 62.5%": lambda: crop(0, 0.625),
    "ChannelCrop FFN 75%": lambda: crop(0, 0.75),
    "ChannelCrop heads 25%": lambda: crop(0.25, 0),
    "ChannelCrop heads 1/12 (round_to 1)": lambda: crop(1 / 12, 0),
    "ChannelCrop heads 50%": lambda: crop(0.5, 0),
    "ChannelCrop heads 25% + FFN 50%": lambda: crop(0.25, 0.5),
    "ChannelCrop heads 25% + FFN 25%": lambda: crop(0.25, 0.25),
    "ChannelCrop all 30% (l1)": lambda: [ChannelCrop(ratio=0.3, importance="l1")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="recipe names to run (default: all)")
    args = parser.parse_args()
    baseline = demo.measure_original(threads=1)
    rows, data = [], []
    for name, recipe in RECIPES.items():
        if args.only and name not in args.only:
            continue
        trial, _ = demo.try_recipe(baseline, name, recipe(), threads=1)
        data.append(dataclasses.asdict(trial) | {"dense_lee_r": baseline.lee_r})
        rows.append(f"| {name} | {trial.speedup:.2f}x | {trial.cosine:.4f} | {trial.min_cosine:.4f} | "
                    f"{trial.lee_r:.4f} | {trial.lee_r - baseline.lee_r:+.4f} | {trial.params:,} | "
                    f"{'yes' if trial.meets_budget else 'no'} | {trial.compile_seconds:.0f} |")
        print(rows[-1], flush=True)
    table = (f"# MiniLM-L6 demo recipes (ORT, 1 thread, batch 1, seq {demo.SEQ}; dense Lee r {baseline.lee_r:.4f})\n\n"
             f"Budget: cosine ≥ {demo.BUDGET['min_cosine']}, Lee r drop ≤ {demo.BUDGET['max_lee_drop']}.\n\n"
             "| recipe | speedup | cosine | min cosine | Lee r | Δ Lee r | params | within budget | compile s |\n"
             "|---|---:|---:|---:|---:|---:|---:|---|---:|\n" + "\n".join(rows) + "\n")
    write_results("demo_recipes", data, table)


if __name__ == "__main__":
    main()
