"""Structured passes on MiniLM-L6 from two exporters: torch's dynamo exporter and the legacy one.

all-MiniLM-L6-v2 is captured twice: by sparc (dynamo, opset 18) and by
``torch.onnx.export(dynamo=False, opset_version=17)`` (the TorchScript exporter, its own
node names, shape subgraphs and attention-mask arithmetic). Each structured pass runs with the
same options and the same calibration (64 Lee background stories at 128 tokens) on both, and
each result is judged on data no pass saw: Pearson r of cosine similarity on the 1,225 rated
Lee pairs, and the mean cosine of the Lee documents' embeddings to the dense model's. The
latency ratio (compiled / dense of the same export, ONNX Runtime, 1 thread, batch 1, seq 128)
is timed side by side in interleaved rounds.

Usage: python benchmarks/legacy_minilm.py [--rounds 10]
Writes results/legacy_minilm.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import write_results

import sparc
from sparc.capture import capture_torch, load_onnx
from sparc.eval import datasets, quality, zoo
from sparc.measure.latency import compare
from sparc.runtime import OrtRunner

RECIPES = {
    "ChannelCrop 0.3": [{"ChannelCrop": {"ratio": 0.3}}],
    "SliceRowsColumns ffn 0.3": [{"SliceRowsColumns": {"target": "ffn", "ratio": 0.3}}],
    "TokenRouter keep 0.8": [{"TokenRouter": {"keep": 0.8}}],
}
GOAL = 0.02  # |Lee r (legacy) − Lee r (dynamo)| for the same pass


def exports(model, calibration, folder: Path) -> dict:
    """The same MiniLM captured by both exporters."""
    inputs = zoo.torch_inputs(calibration[0])
    path = folder / "minilm-legacy.onnx"
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    torch.onnx.export(model.module, (inputs["input_ids"], inputs["attention_mask"]), str(path), dynamo=False,
                      opset_version=17, input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes=axes)
    return {"dynamo": capture_torch(model.module, inputs, model.dynamic_axes), "legacy": load_onnx(path)}


def judged(run, model, dense_embeddings: np.ndarray) -> dict:
    embeddings = quality.encoder(run, model)(datasets.lee_documents())
    cosine = np.sum(embeddings * dense_embeddings, axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(dense_embeddings, axis=1))
    return {"lee_r": round(quality.lee_correlation_of(embeddings), 4), "cosine": round(float(cosine.mean()), 4),
            "embeddings": embeddings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    model = zoo.minilm()
    calibration = model.batches(datasets.lee_background()[:64], 16, seq=128)
    feeds = model.make_inputs([" ".join(datasets.lee_documents())], seq=128)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for exporter, captured in exports(model, calibration, Path(folder)).items():
            dense = OrtRunner(captured, threads=1)
            reference = judged(dense.run, model, quality.encoder(dense.run, model)(datasets.lee_documents()))
            rows.append({"exporter": exporter, "recipe": "dense", "lee_r": reference["lee_r"], "cosine": 1.0,
                         "speedup": 1.0})
            print(rows[-1], flush=True)
            for name, recipe in RECIPES.items():
                compiled = sparc.compile(captured, recipe=recipe, calibration=calibration, threads=1,
                                         latency_rounds=0)
                entry = compiled.report.passes[-1]
                result = judged(compiled.run, model, reference["embeddings"])
                timing = compare({"dense": lambda d=dense: d.run(feeds), "compiled": lambda c=compiled: c.run(feeds)},
                                 rounds=args.rounds, threads=1)
                rows.append({"exporter": exporter, "recipe": name, "lee_r": result["lee_r"],
                             "cosine": result["cosine"], "speedup": round(1 / timing.ratios["compiled"], 3),
                             "params": round(compiled.report.final.params / compiled.report.original.params, 3),
                             "modified": entry.modified, "details": {k: str(v) for k, v in entry.details.items()}})
                print({k: v for k, v in rows[-1].items() if k != "details"}, flush=True)
                write_results("legacy_minilm", rows, _markdown(rows, args.rounds))


def _markdown(rows: list[dict], rounds: int) -> str:
    by = {(r["exporter"], r["recipe"]): r for r in rows}
    lines = ["# Structured passes on MiniLM-L6 from the dynamo and the legacy exporter", "",
             "`python benchmarks/legacy_minilm.py`: same options, same calibration (64 Lee background stories, "
             "128 tokens); Lee r on the 1,225 rated pairs and mean embedding cosine to the same export's dense "
             f"model; speed-up against the same export's dense model (ORT, 1 thread, batch 1, seq 128, {rounds} "
             f"interleaved rounds). Goal: |Δ Lee r| ≤ {GOAL} between exporters.", "",
             "| recipe | dynamo Lee r | legacy Lee r | Δ Lee r | dynamo cosine | legacy cosine | dynamo speed-up "
             "| legacy speed-up | legacy params |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for recipe in ["dense", *RECIPES]:
        dynamo, legacy = by.get(("dynamo", recipe)), by.get(("legacy", recipe))
        if dynamo is None or legacy is None:
            continue
        delta = legacy["lee_r"] - dynamo["lee_r"]
        lines.append(f"| {recipe} | {dynamo['lee_r']:.4f} | {legacy['lee_r']:.4f} | {delta:+.4f}"
                     f"{'' if abs(delta) <= GOAL else ' (over)'} | {dynamo['cosine']:.4f} | {legacy['cosine']:.4f} | "
                     f"{dynamo['speedup']:.2f}× | {legacy['speedup']:.2f}× | {legacy.get('params', 1.0)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
