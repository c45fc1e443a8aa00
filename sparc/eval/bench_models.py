"""Model specs ``sparc bench`` understands, and the inputs it times them on.

A spec is an ONNX file path (run in ONNX Runtime), ``zoo:NAME`` (a zoo model exported to
ONNX and run in ONNX Runtime) or ``torch:NAME`` (the same zoo model in torch eager).
Inputs come from an ``.npz`` file, else from real text for zoo models, else are made up
from the ONNX inputs (:func:`sparc.measure.execute.synthetic_feeds`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from sparc.capture import capture_torch, load_onnx
from sparc.data import synthetic_feeds
from sparc.errors import SparcError
from sparc.eval import datasets, zoo
from sparc.generation import decoder_for
from sparc.runtime import OrtRunner


@functools.lru_cache(maxsize=None)
def zoo_model(name: str):
    return zoo.get(name)


def _split(spec: str) -> tuple[str, str]:
    kind, sep, name = spec.partition(":")
    if sep and kind in ("zoo", "torch"):
        return kind, name
    return "onnx", spec


def runner_for(spec: str, *, threads: int | None) -> Callable[[dict], object]:
    """A function feeds -> outputs for the model ``spec`` (see the module docstring)."""
    kind, name = _split(spec)
    if kind == "onnx":
        return OrtRunner(_onnx_model(name), threads=threads).run
    model = zoo_model(name)
    if kind == "zoo":
        ir_model = capture_torch(model.module, _zoo_example(model), model.dynamic_axes)
        return OrtRunner(ir_model, threads=threads).run
    return _torch_runner(model.module, threads)


def _onnx_model(path: str):
    return load_onnx(path)


def _zoo_example(model):
    return zoo.torch_inputs(model.make_inputs(["an example sentence"] * 2, seq=16))


def _torch_runner(module, threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(threads)

    def run(feeds):
        with torch.inference_mode():
            return module(**{k: torch.from_numpy(v) for k, v in feeds.items()})

    return run


DECODERS = {"smollm2": (zoo.smollm2_kv_onnx, zoo.smollm2_tokenizer)}  # zoo:NAME decoders with a KV cache


def decoder_spec(spec: str, *, backend: str, threads: int | None):
    """A :class:`sparc.generation.Decoder` for an ONNX decoder path or ``zoo:NAME``."""
    kind, name = _split(spec)
    if kind == "torch":
        raise SparcError(f"{spec}: generation runs ONNX decoders (a path or zoo:NAME), not torch eager models")
    if kind == "zoo":
        if name not in DECODERS:
            raise SparcError(f"zoo model {name!r} has no decoder for generation; decoders: {sorted(DECODERS)}")
        return decoder_for(DECODERS[name][0](), backend=backend, threads=threads)
    return decoder_for(name, backend=backend, threads=threads)


def tokenizer_for(specs: Sequence[str], path: str | None, *, required: bool):
    """The tokenizer at ``path`` (a Hugging Face folder or a ``tokenizer.json``), else the first zoo
    decoder's among ``specs``; None when there is neither and it is not ``required``."""
    if path:
        return _load_tokenizer(path)
    for kind, name in map(_split, specs):
        if kind == "zoo" and name in DECODERS:
            return DECODERS[name][1]()
    if required:
        raise SparcError("no tokenizer: give --tokenizer (a Hugging Face tokenizer folder or tokenizer.json)")
    return None


def _load_tokenizer(path: str):
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    location = Path(path)
    if location.is_dir():
        return AutoTokenizer.from_pretrained(location)
    if location.is_file() and location.suffix == ".json":
        return PreTrainedTokenizerFast(tokenizer_file=str(location))
    raise SparcError(f"{path}: not a tokenizer folder or tokenizer.json")


def prompt_ids(tokenizer, length: int) -> list[int]:
    """A prompt of exactly ``length`` tokens: real text (the Lee corpus) when there is a tokenizer,
    else made-up ids."""
    if tokenizer is None:
        return [int(t) for t in np.random.default_rng(0).integers(1, 100, length)]
    ids: list[int] = []
    for text in datasets.lee_background():
        ids += tokenizer(text)["input_ids"]
        if len(ids) >= length:
            return ids[:length]
    raise SparcError(f"the prompt text has only {len(ids)} tokens, fewer than {length}")


def bench_inputs(specs: Sequence[str], npz: str | None, *, batch: int, seq: int) -> dict:
    """The feeds every spec is timed on."""
    if npz:
        with np.load(npz, allow_pickle=False) as archive:
            return {name: archive[name][:batch] for name in archive.files}
    zoo_names = [name for kind, name in map(_split, specs) if kind != "onnx"]
    if zoo_names:
        texts = datasets.lee_background()[:batch]
        return zoo_model(zoo_names[0]).make_inputs(texts, seq=seq)
    return synthetic_feeds(_onnx_model(specs[0]), batch=batch, seq=seq)
