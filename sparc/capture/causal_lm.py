"""Hugging Face causal language models → a generation-ready graph with a KV cache.

The graph has the layout Optimum and onnxruntime-genai use, so it drops into their pipelines:

- inputs ``input_ids`` [batch, seq], ``attention_mask`` [batch, past + seq] (1 real, 0 padding),
  ``position_ids`` [batch, seq], and per layer ``past_key_values.{i}.key`` / ``.value``
  [batch, kv_heads, past, head_dim];
- outputs ``logits`` [batch, seq, vocab] and ``present.{i}.key`` / ``.value``
  [batch, kv_heads, past + seq, head_dim].

Batch, past length and new length are dynamic: one graph runs the prefill (past length 0) and
every decode step. The model is exported with ``torch.onnx.export(dynamo=True)`` around a
wrapper that builds transformers' ``DynamicCache`` from the past tensors.
"""

from __future__ import annotations

import inspect

import onnx_ir as ir

from sparc.capture.torch import export_module
from sparc.errors import UnsupportedModelError

EXAMPLE_BATCH, EXAMPLE_PAST, EXAMPLE_NEW = 2, 5, 3  # distinct sizes, so no dim is specialized


def is_causal_lm(model) -> bool:
    """A transformers model that generates text (``can_generate()``) and has decoder layers."""
    config = getattr(model, "config", None)
    can_generate = getattr(model, "can_generate", None)
    return (config is not None and callable(can_generate) and bool(can_generate())
            and getattr(config, "num_hidden_layers", None) is not None
            and not getattr(config, "is_encoder_decoder", False))


def capture_causal_lm(model) -> ir.Model:
    """Export ``model`` (a transformers ``...ForCausalLM``) with its KV cache (module docstring)."""
    import torch

    label = type(model).__name__
    config = model.config
    layers = int(config.num_hidden_layers)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    wrapper = _with_cache(model, layers)
    batch, past, new = EXAMPLE_BATCH, EXAMPLE_PAST, EXAMPLE_NEW
    vocab = int(config.vocab_size)
    args = (
        torch.randint(0, vocab, (batch, new)),
        torch.ones(batch, past + new, dtype=torch.int64),
        torch.arange(past, past + new).expand(batch, -1).contiguous(),
        [torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)],
    )
    dim = torch.export.Dim
    batch_dim, seq_dim, past_dim, total_dim = dim("batch"), dim("seq"), dim("past"), dim("total")
    dynamic = (
        {0: batch_dim, 1: seq_dim},
        {0: batch_dim, 1: total_dim},
        {0: batch_dim, 1: seq_dim},
        [{0: batch_dim, 2: past_dim} for _ in range(2 * layers)],
    )
    captured = export_module(wrapper, args, {}, dynamic, label)
    _name_like_optimum(captured, layers, label)
    return captured


def _cache_keyword(model) -> str:
    """transformers ≥ 5.x calls the cache argument ``cache``, earlier ``past_key_values``."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _name_like_optimum(model: ir.Model, layers: int, label: str) -> None:
    inputs, outputs = model.graph.inputs, model.graph.outputs
    if len(inputs) != 3 + 2 * layers or len(outputs) != 1 + 2 * layers:
        raise UnsupportedModelError(
            f"{label}: the export has {len(inputs)} inputs and {len(outputs)} outputs, expected "
            f"{3 + 2 * layers} and {1 + 2 * layers} for {layers} layers with a KV cache"
        )
    for value, name in zip(inputs[:3], ("input_ids", "attention_mask", "position_ids")):
        value.name = name
    outputs[0].name = "logits"
    for i in range(layers):
        for j, part in enumerate(("key", "value")):
            inputs[3 + 2 * i + j].name = f"past_key_values.{i}.{part}"
            outputs[1 + 2 * i + j].name = f"present.{i}.{part}"


def _with_cache(lm, layers: int):
    """``lm`` wrapped to take and return its cache as flat tensors (torch is imported lazily)."""
    import torch

    class WithCache(torch.nn.Module):
        """(input_ids, attention_mask, position_ids, [k0, v0, k1, v1, ...]) → (logits, k0', v0', ...)."""

        def __init__(self, lm, layers: int):
            super().__init__()
            self.lm = lm
            self.layers = layers
            self.cache_keyword = _cache_keyword(lm)

        def forward(self, input_ids, attention_mask, position_ids, past):
            from transformers import DynamicCache

            cache = DynamicCache(config=self.lm.config)
            for i in range(self.layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, **{self.cache_keyword: cache})
            extended = getattr(out, "cache", None) or out.past_key_values
            tensors = [out.logits]
            for layer in extended.layers:
                tensors += [layer.keys, layer.values]
            return tuple(tensors)

    return WithCache(lm, layers).train(lm.training)  # export restores this mode on the model
