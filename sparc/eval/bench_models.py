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
from sparc.eval import datasets, zoo
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
