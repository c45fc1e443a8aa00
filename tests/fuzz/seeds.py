"""Small real ONNX models the fuzz corpus mutates, each with real calibration inputs.

- ``mnist``: the ccexam MNIST CNN (conv, pooling, Gemm), fed real digits.
- ``minilm2``: all-MiniLM-L6-v2 cut to its first 2 layers and first 4,096 vocabulary rows
  (real weights; BERT with post-LayerNorm and mean pooling), fed real news text.
- ``smollm2``: SmolLM2-135M cut to its first 2 layers and first 4,096 vocabulary rows
  (real weights; Llama with RMSNorm, rotary, grouped-query attention), fed real text.

Token ids at or above the cut vocabulary are mapped into it. Each seed is exported once
and cached in ``<sparc cache>/fuzz-seeds`` as ``NAME.onnx`` and ``NAME.npz``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparc.eval import datasets, zoo
from sparc.files import cache_dir

VOCAB = 4096
LAYERS = 2
SAMPLES = 8
TOKENS = 16
VERSION = 1  # bump when a seed changes, so caches rebuild


def seed_names() -> list[str]:
    return list(BUILDERS)


def seed_files(name: str) -> tuple[Path, Path]:
    """(model.onnx, calibration.npz) of seed ``name``, built once and cached."""
    folder = cache_dir() / "fuzz-seeds" / f"v{VERSION}"
    model, calib = folder / f"{name}.onnx", folder / f"{name}.npz"
    if not (model.is_file() and calib.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        proto_bytes, feeds = BUILDERS[name]()
        _write_atomic(calib, feeds)
        _write_atomic(model, proto_bytes)
    return model, calib


def _write_atomic(path: Path, payload) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        if isinstance(payload, bytes):
            handle.write(payload)
        else:
            np.savez(handle, **payload)
    os.replace(temp, path)


def _export(module, feeds: dict[str, np.ndarray], axes: dict) -> bytes:
    import onnx_ir as ir

    from sparc.capture import capture_torch

    model = capture_torch(module, zoo.torch_inputs(feeds), axes)
    return ir.serde.serialize_model(model).SerializeToString()


def _mnist() -> tuple[bytes, dict]:
    model = zoo.mnist_cnn()
    digits, _ = datasets.mnist_digits()
    feeds = model.make_inputs(digits[:SAMPLES])
    return _export(model.module, feeds, model.dynamic_axes), feeds


def _cut_embedding(embedding):
    import torch

    cut = torch.nn.Embedding(VOCAB, embedding.weight.shape[1])
    cut.weight.data.copy_(embedding.weight.data[:VOCAB])
    return cut


def _text_feeds(model, texts) -> dict:
    feeds = model.make_inputs(texts, seq=TOKENS)
    feeds["input_ids"] = np.where(feeds["input_ids"] < VOCAB, feeds["input_ids"], feeds["input_ids"] % VOCAB)
    return feeds


def _minilm2() -> tuple[bytes, dict]:
    import torch

    model = zoo.minilm()
    bert = model.module.encoder[0].auto_model
    bert.encoder.layer = torch.nn.ModuleList(list(bert.encoder.layer)[:LAYERS])
    bert.config.num_hidden_layers = LAYERS
    bert.embeddings.word_embeddings = _cut_embedding(bert.embeddings.word_embeddings)
    feeds = _text_feeds(model, datasets.lee_background()[:SAMPLES])
    return _export(model.module, feeds, model.dynamic_axes), feeds


def _smollm2() -> tuple[bytes, dict]:
    import torch

    model = zoo.smollm2()
    lm = model.module.lm
    lm.model.layers = torch.nn.ModuleList(list(lm.model.layers)[:LAYERS])
    lm.config.num_hidden_layers = LAYERS
    lm.model.embed_tokens = _cut_embedding(lm.model.embed_tokens)
    head = torch.nn.Linear(lm.lm_head.in_features, VOCAB, bias=False)
    head.weight = lm.model.embed_tokens.weight  # tied, as in the full model
    lm.lm_head = head
    feeds = _text_feeds(model, datasets.lee_background()[SAMPLES : 2 * SAMPLES])
    return _export(model.module, feeds, model.dynamic_axes), feeds


BUILDERS: dict[str, Callable[[], tuple[bytes, dict]]] = {
    "mnist": _mnist,
    "minilm2": _minilm2,
    "smollm2": _smollm2,
}
