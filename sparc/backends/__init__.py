"""Backends turn the final IR into something that runs. Each registers its targets here."""

from __future__ import annotations

import onnx_ir as ir

from sparc.backends.tvm import TvmRunner
from sparc.errors import BackendError
from sparc.runtime import Executable, OrtRunner

# onnxruntime runs here on every target; wasm and aarch64 add a check of the export on that
# target to the compile (sparc.backends.targets)
BACKENDS: dict[str, tuple[str, ...]] = {"onnxruntime": ("cpu", "wasm", "aarch64"), "tvm": ("cpu",)}
BACKEND_OPTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("providers", "optimization"),
    "tvm": ("choose_layouts", "fallback"),
}


def check_backend(backend: str, target: str) -> None:
    """Raise :class:`BackendError` unless ``backend`` exists and supports ``target``."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; available: {sorted(BACKENDS)}")
    if target not in BACKENDS[backend]:
        raise BackendError(
            f"backend {backend!r} has no target {target!r}; its targets: {list(BACKENDS[backend])}"
        )


def prepare(
    model: ir.Model, backend: str, target: str, *, threads: int | None = None, **options
) -> Executable:
    """Build the runnable form of ``model`` for ``backend`` and ``target``.

    ``options`` go to the backend (ONNX Runtime: ``providers``, ``optimization``; TVM:
    ``choose_layouts``, ``fallback`` (used by ``sparc.compile``)). ONNX Runtime runs
    ``ai.sparc`` ops lowered to standard ONNX (decompressed weights); TVM runs sparc's kernels.
    """
    check_backend(backend, target)
    unknown = sorted(set(options) - set(BACKEND_OPTIONS[backend]))
    if unknown:
        raise BackendError(
            f"backend {backend!r} has no option(s) {unknown}; it accepts {list(BACKEND_OPTIONS[backend])}"
        )
    if backend == "tvm":
        options.pop("fallback", None)
        return TvmRunner(model, threads=threads, **options)
    return OrtRunner(model, threads=threads, **options)
