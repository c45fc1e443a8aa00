"""``sparc demo``: compile the real all-MiniLM-L6-v2 sentence encoder and report what it did.

Calibration: 64 stories of the gensim Lee background corpus, 128 tokens each, in batches of
8 (the last batch is held out for validation). Quality: Pearson correlation between the
model's cosine similarities and human ratings of the 1,225 Lee document pairs (a disjoint
corpus), for the original and the compiled model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sparc import datasets, zoo
from sparc.quality import lee_correlation
from sparc.compiler import CompiledModel, compile
from sparc.files import write_atomic

logger = logging.getLogger(__name__)

CALIBRATION_TEXTS = 64
BATCH = 8
SEQ = 128


def demo_recipe() -> list:
    """The recipe the demo compiles MiniLM with."""
    from sparc.recipe import default_passes

    return default_passes()


def encoder(run, model: zoo.ZooModel):
    """A function texts -> embeddings running ``run(feeds)`` on batches of 16 texts."""

    def encode(texts):
        return np.concatenate([run(feeds) for feeds in model.batches(texts, 16, seq=SEQ)])

    return encode


def run_demo(out: str | Path = "sparc-demo", *, threads: int | None = 1) -> CompiledModel:
    """Compile MiniLM with the demo recipe; write model.onnx, report.md and report.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    minilm = zoo.minilm()
    texts = datasets.lee_background()[:CALIBRATION_TEXTS]
    batches = minilm.batches(texts, BATCH, seq=SEQ)
    compiled = compile(
        minilm.module,
        example_inputs=zoo.torch_inputs(batches[0]),
        dynamic_axes=minilm.dynamic_axes,
        calibration=batches,
        recipe=demo_recipe(),
        threads=threads,
    )
    original = _original_runner(compiled, threads)
    dense_r = lee_correlation(encoder(lambda f: original.run(f)[original.output_names[0]], minilm))
    compiled_r = lee_correlation(encoder(compiled, minilm))
    compiled.report.notes.append(
        f"similarity-rating correlation on the 1,225 gensim Lee pairs: original {dense_r:.4f}, "
        f"compiled {compiled_r:.4f}"
    )
    compiled.export(out / "model.onnx")
    write_atomic(out / "report.md", compiled.report.to_markdown())
    write_atomic(out / "report.json", compiled.report.to_json())
    return compiled


def _original_runner(compiled: CompiledModel, threads):
    from sparc.backends.onnxruntime import OrtRunner

    return OrtRunner(compiled.original, threads=threads)
