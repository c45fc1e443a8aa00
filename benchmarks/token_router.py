"""Token routing (TokenRouter) on MiniLM-L6 and SmolLM2-135M: quality and ORT latency vs dense.

For keep ∈ {0.7, 0.5, 0.3}, start block ∈ {⌈depth/3⌉, depth/2} and each router kind
(learned, norm, attention): the routed model's quality next to the dense one, and its ONNX
Runtime latency ratio (routed / dense time, 1 thread, batch 1) at sequence 128 and 512,
timed side by side in the same run.
- MiniLM: calibration 64 Lee background stories at 128 tokens; quality: Pearson r of cosine
  similarity on the 1,225 rated gensim Lee pairs (128 tokens) and 5-fold logistic-regression
  sentiment accuracy on 200 polarity sentences (batches of 16 padded to their longest).
- SmolLM2: calibration 8 windows of 128 tokens of enwiki text; quality: prefill perplexity on
  8 windows of 128 tokens of the held-out Wikipedia leads.

Usage: python benchmarks/token_router.py [--models minilm smollm2] [--rounds 15]
Writes results/token_router_<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import write_results

from sparc.analysis.blocks import find_blocks
from sparc.capture import capture_torch, load_onnx
from sparc.data import CalibrationData
from sparc.eval import datasets, quality, zoo
from sparc.eval.quality import encoder
from sparc.ir_utils import copy_model
from sparc.measure.cost import count_macs
from sparc.measure.latency import compare
from sparc.passes import TokenRouter
from sparc.runtime import OrtRunner

KEEPS = (0.7, 0.5, 0.3)
ROUTERS = ("learned", "norm", "attention")


def minilm_setup():
    model = zoo.minilm()
    calibration = model.batches(datasets.lee_background()[:64], 16, seq=128)
    captured = capture_torch(model.module, zoo.torch_inputs(calibration[0]), model.dynamic_axes)
    text = " ".join(datasets.lee_documents())

    def measure(run):
        embed = lambda feeds: next(iter(run(feeds).values()))  # noqa: E731
        encode = encoder(embed, model)
        padded_to_longest = lambda texts: np.concatenate([embed(f) for f in model.batches(texts, 16, seq=None)])  # noqa: E731
        return {"lee_r": quality.lee_correlation(encode), "sentiment": quality.sentiment_accuracy(padded_to_longest)}

    feeds = {seq: model.make_inputs([text], seq=seq) for seq in (128, 512)}
    return captured, calibration, measure, feeds


def smollm2_setup():
    model = zoo.smollm2()
    articles = "\n\n".join(datasets.enwiki_articles()[:12])
    calibration = [quality.window_feeds(w) for w in quality.token_windows(model.tokenizer, articles, window=128, count=8)]
    held_out = quality.token_windows(model.tokenizer, datasets.wikipedia_leads(), window=128, count=8)

    def measure(run):
        return {"perplexity": quality.perplexity(lambda feeds: next(iter(run(feeds).values())), held_out)}

    long = quality.token_windows(model.tokenizer, articles, window=512, count=1)[0]
    feeds = {128: quality.window_feeds(long[:, :128]), 512: quality.window_feeds(long)}
    return load_onnx(zoo.smollm2_onnx()), calibration, measure, feeds


def run_model(name: str, setup, rounds: int) -> None:
    base, calibration, measure, feeds = setup()
    depth = len(find_blocks(base))
    starts = sorted({-(-depth // 3), depth // 2})
    dense = OrtRunner(base, threads=1)
    dense_quality = measure(dense.run)
    dense_macs = count_macs(base, feeds[128])[0]
    records = [{"router": "dense", "quality": dense_quality}]  # results are rewritten after each row
    print(name, "dense", dense_quality, flush=True)
    for start in starts:
        for keep in KEEPS:
            for kind in ROUTERS:
                model = copy_model(base)
                router = TokenRouter(keep=keep, start_block=start, router=kind,
                                     calibration=CalibrationData(calibration), threads=1)
                began = time.perf_counter()
                router(model)
                seconds = time.perf_counter() - began
                routed = OrtRunner(model, threads=1)
                latency = {}
                for seq, batch in feeds.items():
                    timing = compare({"dense": lambda: dense.run(batch), "routed": lambda: routed.run(batch)},
                                     rounds=rounds, threads=1)
                    latency[seq] = timing.ratios["routed"]
                record = {"router": kind, "start_block": start, "keep": keep, "quality": measure(routed.run),
                          "latency_ratio": latency, "macs_ratio": count_macs(model, feeds[128])[0] / dense_macs,
                          "compile_seconds": round(seconds, 1),
                          "recall": router.details["routers"][0]["held_out_recall"]}
                records.append(record)
                print(name, record, flush=True)
                write_results(f"token_router_{name}", records, _table(name, depth, records))


def _table(name: str, depth: int, records: list[dict]) -> str:
    dense = records[0]["quality"]
    metrics = list(dense)
    header = " | ".join(metrics)
    lines = [f"# Token routing on {name} ({depth} blocks; ONNX Runtime, 1 thread, batch 1)", "",
             f"Dense: {', '.join(f'{k} {v:.4f}' for k, v in dense.items())}. Latency ratio = routed / dense "
             "time (below 1 is faster); speed-up = 1 / ratio.", "",
             f"| start block | keep | router | {header} | MACs (seq 128) | latency 128 | latency 512 | compile s |",
             "|---|---|---|" + "---|" * len(metrics) + "---|---|---|---|"]
    for r in records[1:]:
        values = " | ".join(f"{r['quality'][m]:.4f}" for m in metrics)
        lines.append(f"| {r['start_block']} | {r['keep']} | {r['router']} | {values} | {r['macs_ratio']:.2f} | "
                     f"{r['latency_ratio'][128]:.2f} | {r['latency_ratio'][512]:.2f} | {r['compile_seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    setups = {"minilm": minilm_setup, "smollm2": smollm2_setup}
    for name in args.models:
        run_model(name, setups[name], args.rounds)


if __name__ == "__main__":
    main()
