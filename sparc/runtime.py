"""ONNX Runtime sessions over an IR model (or an ONNX file) that run feed dicts.

Sessions are built from the serialized IR (through a temporary folder with external data
when the model is over protobuf's 2 GB limit). Threads, execution providers and the graph
optimization level are configurable; ``inter_op_num_threads`` is 1 so that a thread count
means what it says. Ops of a custom domain run after the lowering registered for it
(:func:`register_lowering`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from sparc.capture.onnx import check_tensors
from sparc.errors import BackendError
from sparc.ir_utils import PROTOBUF_LIMIT, weight_bytes

LOWERINGS: dict[str, Callable[[ir.Model], ir.Model]] = {}
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int | None, optimization: str = "all") -> ort.SessionOptions:
    """Session options with ``threads`` intra-op threads (None: ORT's default)."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise BackendError(
            f"unknown graph optimization level {optimization!r}; "
            f"choose from {sorted(OPTIMIZATION_LEVELS)}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise BackendError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
    options.log_severity_level = 4  # failures surface as exceptions, not as log lines
    return options


class Executable:
    """Something that runs feeds: ``run(feeds) -> {output name: array}``."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def register_lowering(domain: str, lower: Callable[[ir.Model], ir.Model]) -> None:
    """Make sessions run models with ops of ``domain``: ``lower`` returns a copy of a model
    with those ops replaced by standard ONNX (``sparc.ops`` registers ``ai.sparc``)."""
    LOWERINGS[domain] = lower


class OrtRunner(Executable):
    """An ONNX Runtime session over an IR model, an ONNX file, or ONNX bytes, that runs feed dicts."""

    def __init__(
        self,
        model: ir.Model | str | os.PathLike | bytes,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        optimization: str = "all",
        arena: bool = True,
    ):
        self.threads = threads
        options = session_options(threads, optimization)
        options.enable_cpu_mem_arena = arena
        providers = list(providers or ["CPUExecutionProvider"])
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise BackendError(
                f"execution providers {unknown} are not available; this onnxruntime has "
                f"{ort.get_available_providers()}"
            )
        try:
            self.session = make_session(model, options, providers)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"ONNX Runtime cannot load the model: {one_line(exc)}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every graph output by name."""
        try:
            outputs = self.session.run(None, dict(feeds))
        except Exception as exc:  # ORT raises Fail, RuntimeException, InvalidArgument, ...
            raise BackendError(f"ONNX Runtime failed to run the model: {one_line(exc)}") from None
        return dict(zip(self.output_names, outputs))


def lowered(model: ir.Model) -> ir.Model:
    """``model`` with every registered domain's ops lowered to standard ONNX (itself if it has none)."""
    for domain in sorted({node.domain for node in model.graph} & set(LOWERINGS)):
        model = LOWERINGS[domain](model)
    return model


def make_session(model, options, providers) -> ort.InferenceSession:
    """A session over a file, over serialized standard ONNX (``bytes``, see :func:`serialized`),
    or over the IR with registered domains lowered to standard ONNX."""
    if isinstance(model, bytes):
        return ort.InferenceSession(model, options, providers=providers)
    if isinstance(model, (str, os.PathLike)):
        model = Path(model)
        proto = onnx.load(str(model), load_external_data=False)
        check_tensors(proto, str(model), model.parent)
        if not any(op.domain in LOWERINGS for op in proto.opset_import):
            return ort.InferenceSession(str(model), options, providers=providers)
        model = ir.load(model)
    model = lowered(model)
    if weight_bytes(model) < PROTOBUF_LIMIT - 2**26:
        return ort.InferenceSession(serialized(model), options, providers=providers)
    with tempfile.TemporaryDirectory(prefix="sparc-ort-") as folder:
        path = Path(folder) / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data")
        return ort.InferenceSession(str(path), options, providers=providers)


def serialized(model: ir.Model) -> bytes:
    """The model as ONNX bytes, registered domains lowered: what a session loads (under 2 GB)."""
    return ir.serde.serialize_model(lowered(model)).SerializeToString()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 400 else text[:400] + " ..."
