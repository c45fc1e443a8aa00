"""What the MiniLM examples share: the real all-MiniLM-L6-v2, calibration stories, quality."""

from __future__ import annotations

import argparse

from sparc import compile
from sparc.eval import datasets, quality, zoo
from sparc.eval.quality import encoder
from sparc.runtime import OrtRunner


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="out", help="output folder (default ./out)")
    parser.add_argument("--quick", action="store_true", help="fewer calibration texts, shorter sequences")
    return parser.parse_args()


def compile_minilm(recipe, quick: bool, **options):
    """MiniLM compiled with ``recipe`` on Lee background stories (8 batches of 8 at 128 tokens;
    ``quick``: 4 of 4 at 64); the last batch validates each pass."""
    minilm = zoo.minilm()
    count, batch, seq = (16, 4, 64) if quick else (64, 8, 128)
    batches = minilm.batches(datasets.lee_background()[:count], batch, seq=seq)
    compiled = compile(minilm.module, example_inputs=zoo.torch_inputs(batches[0]), dynamic_axes=minilm.dynamic_axes,
                       calibration=batches, recipe=recipe, latency_rounds=5 if quick else 20, **options)
    return minilm, compiled


def print_lee_correlation(minilm, compiled) -> None:
    """Pearson r of cosine similarity with the human ratings of the 1,225 Lee pairs."""
    original = OrtRunner(compiled.original)
    dense = quality.lee_correlation(encoder(lambda feeds: next(iter(original.run(feeds).values())), minilm))
    ours = quality.lee_correlation(encoder(compiled, minilm))
    print(f"Lee similarity-rating correlation: original {dense:.4f}, compiled {ours:.4f}")
