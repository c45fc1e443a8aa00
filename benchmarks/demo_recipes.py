"""The recipes the demo could use on MiniLM-L6, measured the way the demo measures them.

Each recipe is compiled on the same capture and calibration as ``sparc demo`` and measured
with its protocol (``sparc.eval.demo``): embedding cosine to the original and Lee r on the 50
rated Lee documents, latency in ONNX Runtime at 1 thread, batch 1, 128 tokens, timed side by
side with the original. The demo's ``CANDIDATES`` are picked from this table.

Usage: python benchmarks/demo_recipes.py [--only NAME ...]
Writes results/demo_recipes.{json,md}; with --only, the rows measured replace those of the
same name and the others are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from common import RESULTS, write_results

from sparc.eval import demo
from sparc.passes import ChannelCrop, SliceRowsColumns

HEADS = demo.HEADS
crop = demo.crop


RECIPES = {
    "FFN slicing 25%": lambda: [SliceRowsColumns(target="ffn", ratio=0.25)],
    "FFN slicing 50%": lambda: [SliceRowsColumns(target="ffn", ratio=0.5)],
    "ChannelCrop FFN 15%": lambda: crop(0, 0.15),
    "ChannelCrop FFN 20%": lambda: crop(0, 0.2),
    "ChannelCrop FFN 25%": lambda: crop(0, 0.25),
    "ChannelCrop FFN 50%": lambda: crop(0, 0.5),
    "ChannelCrop FFN 25% global ranking": lambda: [ChannelCrop(
        ratio=0.25, global_ranking=True, skip=[HEADS], importance="activation", bias_compensation=True,
        reconstruct=True)],
    "ChannelCrop FFN 35% global ranking": lambda: [ChannelCrop(
        ratio=0.35, global_ranking=True, skip=[HEADS], importance="activation", bias_compensation=True,
        reconstruct=True)],
    "ChannelCrop FFN 50% l2, no refinement": lambda: crop(0, 0.5, importance="l2", refine=False),
    "ChannelCrop FFN 62.5%": lambda: crop(0, 0.625),
    "ChannelCrop FFN 75%": lambda: crop(0, 0.75),
    "ChannelCrop heads 25%": lambda: crop(0.25, 0),
    "ChannelCrop heads 1/12": lambda: crop(1 / 12, 0),
    "ChannelCrop heads 50%": lambda: crop(0.5, 0),
    "ChannelCrop heads 25% + FFN 50%": lambda: crop(0.25, 0.5),
    "ChannelCrop heads 25% + FFN 25%": lambda: crop(0.25, 0.25),
    "ChannelCrop all 30% (l1)": lambda: [ChannelCrop(ratio=0.3, importance="l1", bias_compensation=False,
                                                                 reconstruct=False)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="recipe names to run (default: all)")
    args = parser.parse_args()
    unknown = set(args.only or ()) - set(RECIPES)
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}")
    previous = RESULTS / "demo_recipes.json"
    records = {r["name"]: r for r in json.loads(previous.read_text())} if args.only and previous.is_file() else {}
    baseline = demo.measure_original(threads=1)
    for name, recipe in RECIPES.items():
        if args.only and name not in args.only:
            continue
        trial, _ = demo.try_recipe(baseline, name, recipe(), threads=1)
        records[name] = dataclasses.asdict(trial) | {"dense_lee_r": baseline.lee_r}
        print(_row(records[name]), flush=True)
    data = [records[name] for name in RECIPES if name in records]
    table = (f"# MiniLM-L6 demo recipes (ORT, 1 thread, batch 1, seq {demo.SEQ})\n\n"
             f"Budget: cosine ≥ {demo.BUDGET['min_cosine']}, Lee r drop ≤ {demo.BUDGET['max_lee_drop']} "
             f"(dense Lee r {baseline.lee_r:.4f}).\n\n"
             "| recipe | speedup | cosine | min cosine | Lee r | Δ Lee r | params | within budget | compile s |\n"
             "|---|---:|---:|---:|---:|---:|---:|---|---:|\n" + "\n".join(_row(r) for r in data) + "\n")
    write_results("demo_recipes", data, table)


def _row(r: dict) -> str:
    return (f"| {r['name']} | {r['speedup']:.2f}x | {r['cosine']:.4f} | {r['min_cosine']:.4f} | {r['lee_r']:.4f} | "
            f"{r['lee_r'] - r['dense_lee_r']:+.4f} | {r['params']:,} | {'yes' if r['meets_budget'] else 'no'} | "
            f"{r['compile_seconds']:.0f} |")


if __name__ == "__main__":
    main()
