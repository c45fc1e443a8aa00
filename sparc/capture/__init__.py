"""Frontends: every model sparc accepts becomes one ``onnx_ir.Model``."""

from __future__ import annotations

import onnx_ir as ir

from sparc.capture.causal_lm import capture_causal_lm, is_causal_lm
from sparc.capture.onnx import load_onnx
from sparc.capture.torch import capture_torch, is_torch_module


def capture(model, *, example_inputs=None, dynamic_axes=None, mapped: bool = False) -> ir.Model:
    """Capture an ``nn.Module``, an ONNX path, a ``ModelProto`` or an ``onnx_ir.Model``.

    The result is always a fresh IR the caller owns; the source is never modified. A Hugging
    Face causal LM becomes a generation-ready graph with a KV cache (``causal_lm``); it needs no
    example inputs. ``mapped``: an ONNX path's external-data weights stay memory-mapped.
    """
    if is_torch_module(model) and is_causal_lm(model):
        return capture_causal_lm(model)
    if is_torch_module(model):
        return capture_torch(model, example_inputs, dynamic_axes)
    return load_onnx(model, mapped=mapped)


__all__ = ["capture", "capture_causal_lm", "capture_torch", "load_onnx"]
