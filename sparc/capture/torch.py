"""torch frontend: an ``nn.Module`` and example inputs become sparc's IR.

The module is exported with ``torch.onnx.export(dynamo=True)`` (torch.export underneath) in
eval mode, then optimized by onnxscript's optimizer minus the BatchNorm fusions. Dynamic axes, given the legacy way (``{"input_ids": {0: "batch", 1: "seq"}}`` or
``{"x": [0]}``), become named dynamic dimensions. Node metadata keeps the exporter's name
scopes (``pkg.torch.onnx.name_scopes``) so every node traces back to its submodule, and the
exporter's folded weights keep ``pkg.onnxscript.optimizer.folded_from``.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Mapping, Sequence

import onnx_ir as ir
from onnx_ir.passes import common as common_passes

from sparc.capture.onnx import normalize
from sparc.errors import UnsupportedModelError

logger = logging.getLogger(__name__)

DynamicAxes = Mapping[str, "Mapping[int, str] | Sequence[int]"]


def is_torch_module(model) -> bool:
    """True for an ``nn.Module`` (without importing torch when it is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def capture_torch(module, example_inputs, dynamic_axes: DynamicAxes | None = None) -> ir.Model:
    """Export ``module`` called on ``example_inputs`` (a tuple or a dict of keyword inputs)."""
    label = type(module).__name__
    if example_inputs is None:
        raise UnsupportedModelError(
            f"{label}: capturing an nn.Module needs example_inputs (a tuple of tensors or a "
            "dict of keyword tensors)"
        )
    args, kwargs = _split_inputs(example_inputs, label)
    names = _input_names(module, args, kwargs)
    dynamic_shapes = _dynamic_shapes(dynamic_axes, names, args, kwargs, label)
    return export_module(module, args, kwargs, dynamic_shapes, label)


def export_module(module, args: tuple, kwargs: dict, dynamic_shapes, label: str) -> ir.Model:
    """``torch.onnx.export(dynamo=True)`` in eval mode, then :func:`optimize` and normalize."""
    import torch

    training = module.training
    module.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                optimize=False,
                verbose=False,
                report=False,
            )
    except Exception as exc:
        raise UnsupportedModelError(
            f"{label}: torch.export rejected the module: {_first_lines(exc)}"
        ) from exc
    finally:
        module.train(training)
    optimize(program.model)
    return normalize(program.model, label)


def optimize(model: ir.Model) -> None:
    """onnxscript's optimizer (what the exporter runs) without fusing BatchNorm into Conv/Gemm.

    BatchNormalization stays visible to the passes (channel importance by BN scale, coupling
    through BN); ONNX Runtime still fuses it into the convolution when it builds a session.
    """
    from onnxscript import rewriter
    from onnxscript.rewriter.rules import common as rules

    fusions = {
        rules.fuse_batchnorm_into_conv_rule,
        rules.fuse_batchnorm_into_conv_transpose_rule,
        rules.fuse_batchnorm_into_gemm_rule,
    }
    kept = [rule for rule in rewriter._DEFAULT_REWRITE_RULES if rule not in fusions]
    step = ir.passes.PassManager(
        [
            _FoldConstants(),
            rewriter.RewritePass(kept),
            common_passes.RemoveUnusedNodesPass(),
            common_passes.RemoveUnusedFunctionsPass(),
            common_passes.RemoveUnusedOpsetsPass(),
        ],
        steps=2,
        early_stop=True,
    )
    ir.passes.Sequential(
        common_passes.InlinePass(),
        step,
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
    )(model)


class _FoldConstants(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxscript.optimizer import fold_constants_ir

        return ir.passes.PassResult(model, fold_constants_ir(model, onnx_shape_inference=True).modified)


def _split_inputs(example_inputs, label: str) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    raise UnsupportedModelError(
        f"{label}: example_inputs must be a tensor, a tuple of tensors or a dict, "
        f"not {type(example_inputs).__name__}"
    )


def _input_names(module, args: tuple, kwargs: dict) -> list[str]:
    """Names of the forward parameters the positional args bind to, then the keyword names."""
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[: len(args)] + list(kwargs)


def _dynamic_shapes(dynamic_axes, names, args, kwargs, label):
    """Translate legacy dynamic axes into torch.export dynamic shapes keyed like the inputs."""
    if not dynamic_axes:
        return None
    unknown = sorted(set(dynamic_axes) - set(names))
    if unknown:
        raise UnsupportedModelError(
            f"{label}: dynamic_axes names unknown inputs {unknown}; the inputs are {names}"
        )
    specs = {}
    for name in names:
        axes = dynamic_axes.get(name)
        if axes is None:
            specs[name] = None
        elif isinstance(axes, Mapping):
            specs[name] = {int(axis): str(dim) for axis, dim in axes.items()}
        else:
            specs[name] = {int(axis): f"{name}_dim{axis}" for axis in axes}
    if kwargs:
        return specs
    return tuple(specs[name] for name in names[: len(args)])


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints and warnings; real failures still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_lines(exc: BaseException, count: int = 4) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: " + " | ".join(lines[:count])
