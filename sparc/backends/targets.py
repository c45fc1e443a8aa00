"""Deployment targets of the ONNX Runtime backend, and the check that an export runs on them.

``cpu``: this machine's ONNX Runtime (the compiled model runs here). ``wasm``: the exported
ONNX must give Python ONNX Runtime's outputs in onnxruntime-web (WebAssembly, Node.js), where
it is also timed beside the original. ``aarch64``: the same outputs from the aarch64 ONNX Runtime
wheel under qemu-user (correctness only; emulated time is not reported).

The comparison is :mod:`sparc.measure.outputs` per output: every float output's
``max |target − python| / max |python|`` must stay within the ``target`` tolerance (float32
kernels differ in summation order), integer outputs must be identical.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from sparc.backends import arm, ort_web
from sparc.backends.onnxruntime import export_onnx
from sparc.capture import load_onnx
from sparc.data import feed_shapes
from sparc.errors import BackendError
from sparc.measure.latency import Latency
from sparc.measure.outputs import TOLERANCES, OutputError, measures_of
from sparc.ops import has_sparc_ops, lower_to_standard
from sparc.runtime import OrtRunner

CHECKED_TARGETS = ("wasm", "aarch64")
TOLERANCE = TOLERANCES["target"]


@dataclasses.dataclass
class TargetCheck:
    """Outputs of the exported model on ``target`` against Python ONNX Runtime (and, for wasm,
    its latency there beside the original's)."""

    target: str
    runtime: str
    inputs: str
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    latency: Latency | None = None

    def to_markdown(self) -> str:
        line = (f"{self.target} check ({self.runtime}; {self.inputs}): outputs match Python ONNX Runtime, "
                f"max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g} "
                f"(tolerance {self.tolerance:g})")
        if self.latency is not None:
            lat = self.latency
            line += (f"; WebAssembly latency ({lat.threads} thread(s), {lat.rounds} interleaved rounds): "
                     f"original {lat.original_ms:.2f} ms, compiled {lat.compiled_ms:.2f} ms, "
                     f"ratio {lat.ratio:.3f} ({lat.speedup:.2f}x)")
        elif self.target == "aarch64":
            line += "; emulated, so not timed"
        return line


def verify(model: str | Path, target: str, feeds: Mapping[str, np.ndarray], *,
           baseline: str | Path | None = None, threads: int = 1, rounds: int = 10) -> TargetCheck:
    """Run the ONNX file ``model`` on ``target`` and compare with Python ONNX Runtime.

    Raises :class:`BackendError` when the outputs differ beyond ``TOLERANCE``. For ``wasm``
    with ``baseline`` (the original model) and ``rounds`` > 0, both are timed side by side.
    """
    if target not in CHECKED_TARGETS:
        raise BackendError(f"target {target!r} has nothing to verify; choose from {list(CHECKED_TARGETS)}")
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    loaded = load_onnx(model)
    expected = OrtRunner(loaded, threads=threads).run(feeds)
    latency = None
    if target == "wasm":
        models = {"compiled": model} if baseline is None else {"original": baseline, "compiled": model}
        result = ort_web.run(models, feeds, threads=threads, rounds=rounds if baseline is not None else 0)
        got = result.outputs["compiled"]
        runtime = f"onnxruntime-web {ort_web.version()} WebAssembly in Node.js"
        if result.timing is not None:
            original, compiled = result.timing.timings["original"], result.timing.timings["compiled"]
            latency = Latency(original.median_ms, compiled.median_ms, result.timing.ratios["compiled"],
                              threads, rounds, feed_shapes(feeds))
    else:
        outputs, versions = arm.run({"compiled": model}, feeds)
        got = outputs["compiled"]
        runtime = (f"onnxruntime {versions['onnxruntime']} {versions['machine']} wheel, Python "
                   f"{versions['python']}, under qemu-user")
    agreement = _differences(got, expected, model, target, measures_of(loaded))
    if agreement.exceeding(TOLERANCE):
        raise BackendError(f"{model} on {target}: outputs differ from Python ONNX Runtime: "
                           f"{agreement.violations(TOLERANCE)} (relative to each output's scale)")
    return TargetCheck(target, runtime, feed_shapes(feeds), agreement.max_abs, agreement.max_rel, TOLERANCE,
                       latency)


def verify_models(model: ir.Model, original: ir.Model | None, target: str, feeds, *, threads: int = 1,
                  rounds: int = 10) -> TargetCheck:
    """:func:`verify` for in-memory models: exported (standard ONNX) to a scratch folder first."""
    with tempfile.TemporaryDirectory(prefix="sparc-target-") as scratch:
        folder = Path(scratch)
        standard = lower_to_standard(model) if has_sparc_ops(model) else model
        path = export_onnx(standard, folder / "compiled.onnx")
        timed = target == "wasm" and rounds > 0 and original is not None
        baseline = export_onnx(original, folder / "original.onnx") if timed else None
        return verify(path, target, feeds, baseline=baseline, threads=threads, rounds=rounds)


def _differences(got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], model, target,
                 measures: Mapping[str, str] | None = None) -> OutputError:
    missing = sorted(set(expected) - set(got))
    if missing:
        raise BackendError(f"{model} on {target}: outputs {missing} are missing")
    for name, reference in expected.items():
        shape = np.shape(got[name])
        if shape != reference.shape:
            raise BackendError(f"{model} on {target}: output {name!r} has shape {list(shape)}, "
                               f"Python ONNX Runtime gives {list(reference.shape)}")
    return OutputError.of_runs({k: np.asarray(v) for k, v in got.items()}, expected, measures)
