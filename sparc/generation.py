"""Text generation with a KV-cache decoder graph on any backend: ``sparc.generate``.

A :class:`Decoder` runs the graph (``sparc.capture.kv_cache``) one step at a time:

- ``growing`` cache (ONNX Runtime): each step feeds the previous step's ``present`` tensors as
  the next ``past``; shapes change every step, which ONNX Runtime serves from one session.
- ``static`` cache (TVM, which compiles one executable per input shape): the past has a fixed
  ``capacity`` of slots; unused slots are masked out with ``attention_mask`` = 0 and each step
  writes the new tokens' keys and values into the next free slots. Positions come from
  ``position_ids``, so a slot's index does not matter and two shapes (prefill, decode) cover a
  whole generation. The prompt is padded to a multiple of ``PREFILL_BUCKET`` tokens (padding is
  masked), so prompts of similar length share one prefill executable.

Both give the same tokens: a masked slot adds exp(-inf) = 0 to the attention.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparc.capture import load_onnx
from sparc.capture.kv_cache import empty_past, find_kv_cache, positions_from_mask
from sparc.errors import BackendError, UnsupportedModelError
from sparc.runtime import Executable, OrtRunner

PREFILL_BUCKET = 32  # static cache: prompts are padded up to a multiple of this many tokens
DEFAULT_CAPACITY = 512  # static cache slots when none are given


@dataclass
class Generation:
    """What one generation produced and how long it took."""

    tokens: list[int]
    text: str | None
    prompt_tokens: int
    prefill_ms: float
    decode_ms: list[float] = field(default_factory=list)  # one entry per decoded token

    @property
    def decode_ms_per_token(self) -> float:
        return statistics.fmean(self.decode_ms) if self.decode_ms else float("nan")


@dataclass(frozen=True)
class Sampling:
    """Greedy (``temperature`` 0) or sampling with temperature, top-k and top-p (nucleus)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise UnsupportedModelError(
                f"sampling needs temperature ≥ 0, top_k ≥ 0 and 0 < top_p ≤ 1, got {self}"
            )

    def pick(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        """The next token from the last position's logits [vocab]."""
        if self.temperature == 0:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / self.temperature
        if self.top_k:
            cut = np.partition(scores, -self.top_k)[-self.top_k]
            scores = np.where(scores < cut, -np.inf, scores)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if self.top_p < 1:
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < self.top_p  # the smallest set reaching top_p
            kept = np.zeros_like(probs)
            kept[order[keep]] = probs[order[keep]]
            probs = kept / kept.sum()
        return int(rng.choice(len(probs), p=probs))


class Decoder:
    """Steps a KV-cache graph on ``runner``; ``capacity`` None: growing cache, else static."""

    def __init__(self, model: ir.Model, runner: Executable, *, capacity: int | None = None):
        kv = find_kv_cache(model)
        if kv is None or kv.input_ids is None:
            raise UnsupportedModelError(
                "generation needs a decoder with a KV cache (graph inputs such as past_key_values.0.key "
                "concatenated into outputs such as present.0.key) and an input_ids input; capture a "
                "Hugging Face causal LM with sparc.compile, or export one with its past key/value inputs"
            )
        self.model, self.runner, self.kv, self.capacity = model, runner, kv, capacity
        self.logits_name = next(v.name for v in model.graph.outputs if v.name not in kv.present_names)

    def generate(self, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
                 eos: int | None = None) -> Generation:
        """Prefill ``prompt`` (token ids), then decode up to ``max_new_tokens`` (stop at ``eos``)."""
        if not len(prompt):
            raise UnsupportedModelError("the prompt has no tokens")
        rng = np.random.default_rng(sampling.seed)
        state = _State(self, len(prompt) + max_new_tokens)
        start = time.perf_counter()
        logits = state.feed(list(prompt))
        prefill_ms = (time.perf_counter() - start) * 1e3
        tokens, decode_ms = [sampling.pick(logits, rng)], []
        while len(tokens) < max_new_tokens and tokens[-1] != eos:
            start = time.perf_counter()
            logits = state.feed([tokens[-1]])
            decode_ms.append((time.perf_counter() - start) * 1e3)
            tokens.append(sampling.pick(logits, rng))
        return Generation(tokens, None, len(prompt), prefill_ms, decode_ms)


class _State:
    """The cache of one generation (batch 1) and the number of tokens it holds."""

    def __init__(self, decoder: Decoder, total: int):
        self.decoder = decoder
        kv, model = decoder.kv, decoder.model
        self.capacity = decoder.capacity
        if self.capacity is not None and total > self.capacity:
            raise BackendError(f"{total} tokens do not fit the static KV cache of {self.capacity} slots")
        length = 0 if self.capacity is None else self.capacity
        self.past = {pair.past: empty_past(model, pair, 1, length) for pair in kv.pairs}
        self.fed = dict(self.past)  # what runs read: device tensors when the runner offers them
        device_tensor = getattr(decoder.runner, "device_tensor", None)
        if self.capacity is not None and device_tensor is not None:  # updated in place, never copied whole
            for name, array in self.past.items():
                self.fed[name], self.past[name] = device_tensor(array)
        self.valid = np.zeros(length, np.int64)  # static: which slots hold a token
        self.used = 0  # tokens in the cache

    def feed(self, tokens: list[int]) -> np.ndarray:
        """Run ``tokens`` through the model; the last token's logits [vocab]."""
        if self.capacity is None:
            return self._feed_growing(tokens)
        return self._feed_static(tokens)

    def _feed_growing(self, tokens: list[int]) -> np.ndarray:
        kv = self.decoder.kv
        mask = np.ones((1, self.used + len(tokens)), np.int64)
        outputs = self.decoder.runner.run(self._feeds(tokens, mask, len(tokens)))
        for pair in kv.pairs:
            self.past[pair.past] = self.fed[pair.past] = outputs[pair.present]
        self.used += len(tokens)
        return outputs[self.decoder.logits_name][0, -1]

    def _feed_static(self, tokens: list[int]) -> np.ndarray:
        kv, real = self.decoder.kv, len(tokens)
        width = real if real == 1 else math.ceil(real / PREFILL_BUCKET) * PREFILL_BUCKET
        padded = tokens + [0] * (width - real)
        mask = np.concatenate([self.valid, np.ones(real, np.int64), np.zeros(width - real, np.int64)])[None]
        outputs = self.decoder.runner.run(self._feeds(padded, mask, width))
        for pair in kv.pairs:
            new = [slice(None)] * 4
            new[pair.axis] = slice(self.capacity, self.capacity + real)
            slots = [slice(None)] * 4
            slots[pair.axis] = slice(self.used, self.used + real)
            self.past[pair.past][tuple(slots)] = outputs[pair.present][tuple(new)]
        self.valid[self.used:self.used + real] = 1
        self.used += real
        return outputs[self.decoder.logits_name][0, real - 1]

    def _feeds(self, tokens: list[int], mask: np.ndarray, width: int) -> dict[str, np.ndarray]:
        kv = self.decoder.kv
        feeds = {kv.input_ids: np.asarray([tokens], np.int64), **self.fed}
        if kv.attention_mask is not None:
            feeds[kv.attention_mask] = mask
        if kv.position_ids is not None:
            positions = np.arange(self.used, self.used + width, dtype=np.int64)[None]
            feeds[kv.position_ids] = positions if self.capacity is not None else positions_from_mask(mask, width)
        return feeds


def decoder_for(model, *, backend: str = "onnxruntime", threads: int | None = None,
                capacity: int | None = None) -> Decoder:
    """A :class:`Decoder` for a ``CompiledModel``, an ONNX path or an IR model on ``backend``
    (``onnxruntime``: growing cache; ``tvm``: static cache of ``capacity`` slots, default 512)."""
    ir_model = getattr(model, "model", None)
    if not isinstance(ir_model, ir.Model):
        ir_model = model if isinstance(model, ir.Model) else load_onnx(model)
    if backend == "onnxruntime":
        return Decoder(ir_model, OrtRunner(ir_model, threads=threads), capacity=capacity)
    if backend == "tvm":
        from sparc.backends.tvm import TvmRunner

        return Decoder(ir_model, TvmRunner(ir_model, threads=threads), capacity=capacity or DEFAULT_CAPACITY)
    raise BackendError(f"generation runs on the onnxruntime or tvm backend, not {backend!r}")



def generate(model, prompt: str | Sequence[int], *, tokenizer=None, max_new_tokens: int = 32,
             backend: str = "onnxruntime", threads: int | None = None, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_at_eos: bool = True,
             capacity: int | None = None) -> Generation:
    """Generate text from ``prompt`` with a KV-cache decoder (``sparc.compile`` of a Hugging Face
    causal LM, or an ONNX decoder with past key/value inputs).

    ``prompt`` is text (then ``tokenizer``, a transformers tokenizer, encodes it and decodes the
    result) or token ids. Greedy by default; ``temperature`` > 0 samples (with ``top_k``,
    ``top_p``, ``seed``). Stops at the tokenizer's end-of-sequence token unless ``stop_at_eos``
    is False. The result carries the prefill time and the time of every decoded token.
    """
    decoder = model if isinstance(model, Decoder) else decoder_for(model, backend=backend, threads=threads,
                                                                      capacity=capacity)
    ids = encode(tokenizer, prompt)
    eos = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None
    result = decoder.generate(ids, max_new_tokens, Sampling(temperature, top_k, top_p, seed), eos)
    if tokenizer is not None:
        result.text = tokenizer.decode(result.tokens, skip_special_tokens=True)
    return result


def encode(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of ``prompt`` (text needs a tokenizer)."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise UnsupportedModelError("a text prompt needs a tokenizer (or give the prompt as token ids)")
        return [int(t) for t in tokenizer(prompt)["input_ids"]]
    return [int(t) for t in prompt]


@dataclass
class DecodeTiming:
    """Side-by-side generation timings: per contestant, the median over rounds."""

    prompt_tokens: int
    new_tokens: int
    rounds: int
    prefill_ms: dict[str, list[float]]  # per round
    decode_ms_per_token: dict[str, list[float]]  # per round
    texts: dict[str, str | None]
    tokens: dict[str, list[int]]

    def speedup(self, name: str, baseline: str) -> float:
        """Median over rounds of the baseline's decode time per token over ``name``'s."""
        pairs = zip(self.decode_ms_per_token[baseline], self.decode_ms_per_token[name])
        return statistics.median(base / own for base, own in pairs)

    def to_markdown(self, baseline: str | None = None) -> str:
        base = baseline or next(iter(self.decode_ms_per_token))
        lines = [f"{self.prompt_tokens}-token prompt, {self.new_tokens} new tokens, median of {self.rounds} "
                 f"interleaved rounds; speed-up: median per-round ratio to {base}", "",
                 "| model | prefill ms | decode ms/token | decode speed-up |", "|---|---:|---:|---:|"]
        for name, rounds in self.decode_ms_per_token.items():
            lines.append(f"| {name} | {statistics.median(self.prefill_ms[name]):.1f} | "
                         f"{statistics.median(rounds):.2f} | {self.speedup(name, base):.2f}× |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def time_generation(decoders: Mapping[str, Decoder], prompt: Sequence[int], new_tokens: int, *,
                    rounds: int = 3, sampling: Sampling = Sampling(), tokenizer=None) -> DecodeTiming:
    """Generate ``new_tokens`` (no early stop) with every decoder, in interleaved rounds, after
    an untimed two-token warm-up each (TVM compiles its prefill and decode shapes there)."""
    for decoder in decoders.values():
        decoder.generate(prompt, 2, sampling)
    prefill: dict[str, list[float]] = {name: [] for name in decoders}
    decode: dict[str, list[float]] = {name: [] for name in decoders}
    last: dict[str, Generation] = {}
    for _ in range(rounds):
        for name, decoder in decoders.items():
            result = decoder.generate(prompt, new_tokens, sampling)
            prefill[name].append(result.prefill_ms)
            decode[name].append(result.decode_ms_per_token)
            last[name] = result
    texts = {name: tokenizer.decode(g.tokens, skip_special_tokens=True) if tokenizer is not None else None
             for name, g in last.items()}
    return DecodeTiming(len(prompt), new_tokens, rounds, prefill, decode, texts,
                        {n: g.tokens for n, g in last.items()})


__all__ = ["DecodeTiming", "Decoder", "Generation", "Sampling", "decoder_for", "generate", "time_generation"]
