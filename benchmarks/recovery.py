"""Recovery: quality of compressed models before and after Reconstruct / Distill.

MiniLM-L6: 16×1 blocks at density 0.3 and 2:4, SparseGPT with sequential calibration, then
Reconstruct, then (16×1) Distill. Calibration 128 Lee background stories (seq 128); quality on data
no pass saw: Lee Pearson r over the 1,225 human-rated pairs, and the cosine of each of the 50
Lee documents' embeddings to the dense model's.

SmolLM2-135M (``--part smollm2``, long): 2:4, 25% slicing, 50% unstructured and 16×1 at 50%
(SparseGPT sequential), each measured after compression and after Reconstruct. Calibration 64 windows of 512 tokens from the gensim enwiki
articles; perplexity on 32 windows of 512 of the ovos Wikipedia leads.

CNNs (``--part cnn``): EfficientNet-Lite0 ChannelCrop, then RecalibrateNorms, then Reconstruct
(calibration 40 CIFAR photos, top-1 agreement with dense on the 20 ImageNet photos), and the
MNIST CNN at ratio 0.7 (accuracy on 1,000 held-out digits).

Every row: quality, fidelity, parameters (fraction of the dense model's), ORT latency ratio
(dense / compiled, interleaved rounds, median of ratios; sparsity runs dense in ORT), and the
recovery passes' seconds. Threads 2.

Usage: python benchmarks/recovery.py [--part minilm smollm2 cnn]
Writes results/recovery_<part>.{json,md}.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx_ir as ir
from common import write_results

import sparc
from sparc.capture import capture_torch, load_onnx
from sparc.eval import datasets, quality, zoo
from sparc.passes import (
    BlockSparsity,
    ChannelCrop,
    Distill,
    NMSparsity,
    RecalibrateNorms,
    Reconstruct,
    SliceRowsColumns,
    UnstructuredSparsity,
)
from sparc.passes.base import SparcPass
from sparc.runtime import OrtRunner

THREADS = 2
UNREFINED = {"bias_compensation": False, "reconstruct": False}  # the crop alone; recovery is what is measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["minilm", "cnn"], choices=["minilm", "smollm2", "cnn"])
    parser.add_argument("--steps", type=int, default=200, help="Reconstruct steps per block")
    parser.add_argument("--smollm2", nargs="+", default=list(SMOLLM2), choices=list(SMOLLM2),
                        help="SmolLM2 compressions (each about 40 min)")
    args = parser.parse_args()
    for part in args.part:
        {"minilm": minilm, "smollm2": smollm2, "cnn": cnn}[part](args)


def _compile(model, recipe, calibration, *, latency=True):
    return sparc.compile(model, calibration=calibration, recipe=recipe, threads=THREADS,
                         latency_rounds=10 if latency else 0)


def _row(model: str, compression: str, recovery: str, compiled, quality_value: float, fidelity: str) -> dict:
    report = compiled.report
    recovery_seconds = sum(e.seconds for e in report.passes if e.name in ("Reconstruct", "Distill", "RecalibrateNorms"))
    return {
        "model": model, "compression": compression, "recovery": recovery, "quality": round(quality_value, 4),
        "fidelity": fidelity, "params": round(report.final.params / report.original.params, 3),
        "macs": round(report.final.macs / report.original.macs, 3),
        "ort_speedup": round(report.latency.speedup, 3) if report.latency else None,
        "recovery_s": round(recovery_seconds, 1),
        "compile_s": round(sum(e.seconds for e in report.passes), 1),
    }


def _table(title: str, note: str, dense: str, rows: list[dict]) -> str:
    lines = [f"# {title}\n", note, "",
             "| compression | recovery | quality | fidelity | params | MACs | ORT speed | recovery s | compile s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|", dense]
    for r in rows:
        lines.append(f"| {r['compression']} | {r['recovery']} | {r['quality']:.4f} | {r['fidelity']} | "
                     f"{r['params']:.3f} | {r['macs']:.3f} | {r['ort_speedup'] or ''}× | {r['recovery_s']} | "
                     f"{r['compile_s']} |")
    return "\n".join(lines) + "\n"


def _recipes(compress, steps: int, *, distill: bool = True) -> dict[str, list]:
    recipes = {"none": [compress()], "Reconstruct": [compress(), Reconstruct(steps=steps)]}
    if distill:
        recipes["Reconstruct + Distill"] = [compress(), Reconstruct(steps=steps), Distill(steps=steps, lr=1e-4)]
    return recipes


def _cnn_recipes(compress, steps: int) -> dict[str, list]:
    return {"none": [compress()], "RecalibrateNorms": [compress(), RecalibrateNorms()],
            "RecalibrateNorms + Reconstruct": [compress(), RecalibrateNorms(), Reconstruct(steps=steps)]}


def minilm(args) -> None:
    model = zoo.minilm()
    calibration = model.batches(datasets.lee_background()[:128], 16, seq=128)
    captured = capture_torch(model.module, zoo.torch_inputs(calibration[0]), model.dynamic_axes)
    documents = datasets.lee_documents()
    dense = OrtRunner(captured, threads=THREADS)
    dense_embeddings = quality.encoder(lambda f: next(iter(dense.run(f).values())), model)(documents)
    dense_r = quality.lee_correlation_of(dense_embeddings)
    compressions = {
        "16×1 blocks, density 0.3, SparseGPT": lambda: BlockSparsity(block=(16, 1), density=0.3, method="sparsegpt"),
        "2:4 SparseGPT": lambda: NMSparsity(n=2, m=4, method="sparsegpt"),
    }
    rows = []
    for name, compress in compressions.items():
        for recovery, recipe in _recipes(compress, args.steps, distill=name.startswith("16")).items():
            compiled = _compile(captured, recipe, calibration)
            embeddings = quality.encoder(compiled, model)(documents)
            cosine = np.sum(embeddings * dense_embeddings, 1) / (
                np.linalg.norm(embeddings, axis=1) * np.linalg.norm(dense_embeddings, axis=1))
            rows.append(_row("MiniLM-L6", name, recovery, compiled, quality.lee_correlation_of(embeddings),
                             f"cos {cosine.mean():.3f} (min {cosine.min():.3f})"))
            print(rows[-1], flush=True)
    note = ("Quality: Lee Pearson r (higher is better). Fidelity: cosine of the 50 Lee documents' "
            "embeddings to the dense model's. Calibration 128 Lee background stories at seq 128 "
            f"(no Lee document among them); Reconstruct {args.steps} steps per block, lr 1e-3, "
            f"micro-batches of 4; Distill {args.steps} steps, lr 1e-4. `python benchmarks/recovery.py --part minilm`.")
    write_results("recovery_minilm", {"dense_r": dense_r, "rows": rows},
                  _table("Recovery on MiniLM-L6", note, f"| dense | | {dense_r:.4f} | | 1 | 1 | 1× | | |", rows))


class Perplexity(SparcPass):
    """Benchmark probe placed between passes: the current model's perplexity, model untouched."""

    lossless = False

    def __init__(self, windows):
        super().__init__()
        self.windows = windows

    def options(self) -> dict:
        return {}

    def call(self, model):
        runner = OrtRunner(model, threads=THREADS)
        self.details["perplexity"] = quality.perplexity(lambda f: next(iter(runner.run(f).values())), self.windows)
        return ir.passes.PassResult(model, modified=False)


SMOLLM2 = {
    "2:4 SparseGPT": lambda: NMSparsity(n=2, m=4, method="sparsegpt"),
    "25% slicing": lambda: SliceRowsColumns(ratio=0.25),
    "50% unstructured SparseGPT": lambda: UnstructuredSparsity(density=0.5, method="sparsegpt"),
    "16×1 blocks, density 0.5, SparseGPT": lambda: BlockSparsity(block=(16, 1), density=0.5, method="sparsegpt"),
}


def smollm2(args) -> None:
    """Each compression, its perplexity (a probe pass), then Reconstruct, in one compile."""
    path = str(zoo.smollm2_onnx())
    tokenizer = zoo.smollm2().tokenizer
    windows = quality.token_windows(tokenizer, "\n\n".join(datasets.enwiki_articles()), window=512, count=64)
    calibration = [
        {"input_ids": np.concatenate(chunk), "attention_mask": np.ones((len(chunk), 512), np.int64)}
        for chunk in (windows[i : i + 8] for i in range(0, len(windows), 8))
    ]
    evaluation = quality.token_windows(tokenizer, datasets.wikipedia_leads(), window=512, count=32)
    dense = OrtRunner(load_onnx(path), threads=THREADS)
    dense_ppl = quality.perplexity(lambda f: next(iter(dense.run(f).values())), evaluation)
    print(f"dense perplexity {dense_ppl:.2f}", flush=True)
    rows = []
    for name in args.smollm2:
        recipe = [SMOLLM2[name](), Perplexity(evaluation), Reconstruct(steps=args.steps, batch_size=1)]
        compiled = _compile(path, recipe, calibration, latency=name == "25% slicing")
        before = compiled.report.passes[1].details["perplexity"]
        after = quality.perplexity(compiled, evaluation)
        for recovery, value in (("none", before), ("Reconstruct", after)):
            row = _row("SmolLM2-135M", name, recovery, compiled, value, f"compress {compiled.report.passes[0].seconds:.0f} s")
            if recovery == "none":
                row.update(recovery_s=0, params=round(compiled.report.passes[0].stats.params / compiled.report.original.params, 3))
            rows.append(row)
            print(row, flush=True)
        write_results("recovery_smollm2", {"dense_ppl": dense_ppl, "rows": rows}, _smollm2_table(dense_ppl, rows, args))


def _smollm2_table(dense_ppl: float, rows: list[dict], args) -> str:
    note = ("Quality: perplexity on 32 × 512 tokens of the ovos Wikipedia leads (lower is better); "
            "calibration 64 × 512 tokens of the gensim enwiki articles (8 batches of 8; the last held "
            "out for validation), SparseGPT calibrated sequentially. Reconstruct: "
            f"{args.steps} steps per block, micro-batches of one 512-token window, lr 1e-3. The "
            "`none` row is the same compile measured between the passes. Threads 2. "
            "`python benchmarks/recovery.py --part smollm2`.")
    return _table("Recovery on SmolLM2-135M", note, f"| dense | | {dense_ppl:.2f} | | 1 | 1 | | | |", rows)


def cnn(args) -> None:
    rows = []
    net = zoo.efficientnet_lite0()
    calibration = [net.make_inputs(p) for p in np.split(datasets.cifar_photos()[:40], 5)]
    photos = net.make_inputs(datasets.imagenet_photos()[0])
    captured = capture_torch(net.module, zoo.torch_inputs(calibration[0]), net.dynamic_axes)
    dense_top1 = OrtRunner(captured, threads=THREADS).run(photos)
    dense_top1 = next(iter(dense_top1.values())).argmax(1)
    for ratio in (0.1, 0.2):
        for recovery, recipe in _cnn_recipes(lambda r=ratio: ChannelCrop(ratio=r, **UNREFINED), args.steps).items():
            compiled = _compile(captured, recipe, calibration)
            agree = int((compiled(photos).argmax(1) == dense_top1).sum())
            rows.append(_row("EfficientNet-Lite0", f"ChannelCrop {ratio}", recovery, compiled, agree / 20,
                             f"top-1 agreement {agree}/20"))
            print(rows[-1], flush=True)
    mnist = zoo.mnist_cnn()
    digits, labels = datasets.mnist_digits()
    calibration = mnist.batches(digits[1::16][:512], 64)
    test, test_labels = mnist.batches(digits[::5][:1000], 250), labels[::5][:1000]
    captured = capture_torch(mnist.module, zoo.torch_inputs(calibration[0]), mnist.dynamic_axes)
    for recovery, recipe in _cnn_recipes(lambda: ChannelCrop(ratio=0.7, **UNREFINED), args.steps).items():
        compiled = _compile(captured, recipe, calibration)
        accuracy = float(np.mean(np.concatenate([compiled(b["image"]) for b in test]).argmax(1) == test_labels))
        rows.append(_row("MNIST CNN", "ChannelCrop 0.7", recovery, compiled, accuracy, "accuracy"))
        print(rows[-1], flush=True)
    note = ("EfficientNet-Lite0: quality = top-1 agreement with the dense model on the 20 ImageNet "
            "photos (calibration: 40 CIFAR photos). MNIST CNN: accuracy on 1,000 digits not used "
            "for calibration. `python benchmarks/recovery.py --part cnn`.")
    write_results("recovery_cnn", {"rows": rows}, _table("Recovery on CNNs", note, "| dense | | 1 | | 1 | 1 | 1× | | |", rows))


if __name__ == "__main__":
    main()
