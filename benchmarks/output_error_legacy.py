"""Per-output error on a multi-output model from the legacy exporter.

all-MiniLM-L6-v2 exported with ``torch.onnx.export(dynamo=False, opset_version=17)`` and
returning ``input_ids`` (an integer passthrough, values up to about 30,000), the token
embeddings and the sentence embedding. Each recipe is compiled with 2 held-out batches of
the Lee background corpus; the table gives every output's error relative to its own scale
and its fidelity, beside what one pooled number (max |y − y₀| over all outputs / max |y₀|
over all outputs, what reports gave before) would have said.

Usage: python benchmarks/output_error_legacy.py
Writes results/output_error_legacy.{json,md}.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from common import write_results

import sparc
from sparc.eval import datasets, zoo
from sparc.passes import BlockSparsity, NMSparsity, SliceRowsColumns
from sparc.runtime import OrtRunner

RECIPES = {
    'SliceRowsColumns(target="ffn", ratio=0.5)': lambda: [SliceRowsColumns(target="ffn", ratio=0.5)],
    "NMSparsity(2:4, wanda)": lambda: [NMSparsity(n=2, m=4, method="wanda")],
    "BlockSparsity(16×1, density 0.3, sparsegpt)": lambda: [
        BlockSparsity(block=(16, 1), density=0.3, method="sparsegpt")],
}


class WithPassthrough(torch.nn.Module):
    """input_ids, attention_mask -> (input_ids, token embeddings, sentence embedding)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        out = self.encoder({"input_ids": input_ids, "attention_mask": attention_mask})
        return input_ids, out["token_embeddings"], out["sentence_embedding"]


def legacy_export(folder: Path, feeds) -> Path:
    """The MiniLM with an integer passthrough output, from the TorchScript exporter."""
    module = WithPassthrough(zoo.minilm().module.encoder).eval()
    path = folder / "minilm-legacy.onnx"
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    torch.onnx.export(module, tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")),
                      str(path), dynamo=False, opset_version=17, input_names=["input_ids", "attention_mask"],
                      output_names=["input_ids_out", "token_embeddings", "sentence_embedding"],
                      dynamic_axes=axes)
    return path


def pooled_max_rel(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> float:
    """The former pooled measure: max |y − y₀| over all outputs / max |y₀| over all outputs."""
    diff = max(float(np.abs(g.astype(np.float64) - w).max()) for gb, wb in zip(got, want) for g, w in zip(gb, wb))
    scale = max(float(np.abs(w.astype(np.float64)).max()) for wb in want for w in wb)
    return diff / scale


def main() -> None:
    minilm = zoo.minilm()
    batches = minilm.batches(datasets.lee_background()[:80], 8, seq=128)
    rows, data = [], []
    with tempfile.TemporaryDirectory() as scratch:
        path = legacy_export(Path(scratch), batches[0])
        for label, recipe in RECIPES.items():
            compiled = sparc.compile(str(path), calibration=batches, recipe=recipe(), threads=2, latency_rounds=0)
            valid = batches[-2:]
            names = compiled.output_names
            dense, ours = OrtRunner(compiled.original, threads=2), OrtRunner(compiled.model, threads=2)
            want = [[dense.run(f)[n] for n in names] for f in valid]
            got = [[ours.run(f)[n] for n in names] for f in valid]
            error = compiled.report.error
            pooled = pooled_max_rel(got, want)
            record = {"recipe": label, "pooled_max_rel": pooled, "outputs": error.to_dict()["outputs"]}
            data.append(record)
            for o in error.outputs:
                rel = "exact" if o.exact else f"{o.max_rel:.3g}"
                rows.append(f"| {label} | {pooled:.2g} | {o.name} ({o.dtype}) | {o.measure} | {rel} | {o.fidelity()} |")
    table = ("# Per-output error, MiniLM-L6 legacy export (opset 17) with an input_ids passthrough\n\n"
             "| recipe | pooled max rel (before) | output | measure | max rel err | fidelity |\n"
             "|---|---:|---|---|---:|---|\n" + "\n".join(rows) + "\n")
    write_results("output_error_legacy", data, table)
    print(table)


if __name__ == "__main__":
    main()
