"""SliceRowsColumns (SliceGPT): rotate SmolLM2-135M's residual stream by its principal
components and delete 25% of its rows and columns.

    python examples/slice_rows_columns.py [--out out] [--quick]

Calibration: windows of 128 tokens of Wikipedia articles; quality: prefill perplexity on
held-out Wikipedia leads, original and sliced. The sliced model is a smaller dense model.
"""

import argparse
from pathlib import Path

from transformers import AutoTokenizer

from sparc import compile
from sparc.capture import load_onnx
from sparc.eval import datasets, quality, zoo
from sparc.passes import SliceRowsColumns
from sparc.runtime import OrtRunner

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="out", help="output folder (default ./out)")
parser.add_argument("--quick", action="store_true", help="fewer calibration and evaluation windows")
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(zoo.smollm2_folder())
calibration_count, evaluation_count = (4, 2) if args.quick else (16, 8)
articles = "\n\n".join(datasets.enwiki_articles()[:16])
windows = quality.token_windows(tokenizer, articles, window=128, count=calibration_count)
held_out = quality.token_windows(tokenizer, datasets.wikipedia_leads(), window=128, count=evaluation_count)
compiled = compile(load_onnx(zoo.smollm2_onnx()), calibration=[quality.window_feeds(w) for w in windows],
                   recipe=[SliceRowsColumns(ratio=0.25)], latency_rounds=3 if args.quick else 10)
print(compiled.report)
original = OrtRunner(compiled.original)
logits = lambda run: (lambda feeds: next(iter(run(feeds).values())))  # noqa: E731
print(f"perplexity: original {quality.perplexity(logits(original.run), held_out):.2f}, "
      f"sliced {quality.perplexity(logits(compiled.run), held_out):.2f}")
print(f"wrote {compiled.export(Path(args.out) / 'smollm2_sliced.onnx')}")
