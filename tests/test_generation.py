"""KV-cache capture and generation: logits against Hugging Face at every step, prefill + decode
against one full-window run, growing and static caches, ONNX Runtime against TVM, another
exporter's decoder, passes on a decoder, the CLI.

Architectures: small random Llama, Qwen2 and GPT-2 models (transformers configs), so the
capture is checked on three attention/position schemes; SmolLM2 itself runs in the ``long`` test
and in ``benchmarks/decode.py``. Logit tolerance: 1e-4 of the logits' largest magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest

import sparc
from sparc.capture import capture, load_onnx
from sparc.capture.kv_cache import complete_feeds, find_kv_cache
from sparc.errors import StructureError, UnsupportedModelError
from sparc.generation import Decoder, Sampling, decoder_for, generate, time_generation
from sparc.runtime import OrtRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 320
TOLERANCE = 1e-4


def _tiny(kind: str, vocab: int = VOCAB):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        return transformers.LlamaForCausalLM(config).eval()
    if kind == "qwen2":
        config = transformers.Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        return transformers.Qwen2ForCausalLM(config).eval()
    config = transformers.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def llama():
    model = _tiny("llama")
    return model, capture(model)


def _prompt(length: int = 9, seed: int = 1) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(1, VOCAB, length)]


def _hf_steps(model, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and each step's last logits from Hugging Face's own cached decoding."""
    out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, min_new_tokens=steps, pad_token_id=0)
    tokens = out.sequences[0, len(prompt):].tolist()
    return tokens, [logit[0].numpy() for logit in out.logits]


class _Recording(OrtRunner):
    """An ONNX Runtime runner that keeps every step's logits."""

    def __init__(self, model):
        super().__init__(model)
        self.logits = []

    def run(self, feeds):
        outputs = super().run(feeds)
        self.logits.append(outputs["logits"])
        return outputs


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_decoder_matches_hugging_face_at_every_step(kind):
    model = _tiny(kind)
    graph = capture(model)
    kv = find_kv_cache(graph)
    assert kv is not None and len(kv.pairs) == 4 and kv.position_ids == "position_ids"
    assert [v.name for v in graph.graph.outputs][:3] == ["logits", "present.0.key", "present.0.value"]
    prompt = _prompt()
    with torch.no_grad():
        want_tokens, want_logits = _hf_steps(model, prompt, 6)
    runner = _Recording(graph)
    result = Decoder(graph, runner).generate(prompt, 6)
    assert result.tokens == want_tokens
    got = [runner.logits[0][0, -1]] + [step[0, -1] for step in runner.logits[1:]]
    for step, (a, b) in enumerate(zip(got, want_logits)):
        assert np.abs(a - b).max() <= TOLERANCE * np.abs(b).max(), f"step {step}"
    assert model.training is False  # capture leaves the model's mode alone


def test_prefill_and_decode_equal_one_full_window_run(llama):
    _, graph = llama
    runner = _Recording(graph)
    prompt = _prompt()
    tokens = Decoder(graph, runner).generate(prompt, 5).tokens
    window = prompt + tokens[:-1]
    full = OrtRunner(graph).run(complete_feeds({"input_ids": np.asarray([window])}, graph, find_kv_cache(graph)))
    steps = np.concatenate([runner.logits[0][0]] + [step[0] for step in runner.logits[1:]])
    scale = np.abs(full["logits"]).max()
    assert np.abs(steps - full["logits"][0]).max() <= TOLERANCE * scale


def test_left_padded_batch_positions_count_real_tokens(llama):
    model, graph = llama
    prompt = _prompt(6)
    feeds = {"input_ids": np.asarray([[0, 0] + prompt]), "attention_mask": np.asarray([[0, 0] + [1] * 6])}
    padded = OrtRunner(graph).run(complete_feeds(feeds, graph, find_kv_cache(graph)))["logits"][0, -1]
    with torch.no_grad():
        alone = model(torch.tensor([prompt])).logits[0, -1].numpy()
    assert np.abs(padded - alone).max() <= TOLERANCE * np.abs(alone).max()


def test_static_cache_gives_the_growing_cache_tokens(llama):
    _, graph = llama
    prompt = _prompt(40)  # more than one prefill bucket: padding is masked
    growing = Decoder(graph, OrtRunner(graph)).generate(prompt, 8)
    static = Decoder(graph, OrtRunner(graph), capacity=96).generate(prompt, 8)
    assert static.tokens == growing.tokens
    with pytest.raises(sparc.BackendError, match="do not fit the static KV cache"):
        Decoder(graph, OrtRunner(graph), capacity=16).generate(prompt, 8)


def test_generate_on_onnxruntime_and_tvm_agree(llama):
    pytest.importorskip("tvm")
    _, graph = llama
    prompt = _prompt()
    ort_result = generate(graph, prompt, max_new_tokens=6)
    decoder = decoder_for(graph, backend="tvm", capacity=32)
    tvm_result = generate(decoder, prompt, max_new_tokens=6)
    assert tvm_result.tokens == ort_result.tokens
    weights = sum(v.const_value.nbytes for v in graph.graph.initializers.values() if v.const_value is not None)
    assert 0.9 * weights < decoder.runner.constant_bytes < 1.5 * weights  # dense layouts pad a little
    assert len(tvm_result.decode_ms) == 5 and tvm_result.prefill_ms > 0


def test_sampling_is_seeded_and_top_k_one_is_greedy(llama):
    _, graph = llama
    decoder = decoder_for(graph)
    prompt = _prompt()
    greedy = decoder.generate(prompt, 6).tokens
    assert decoder.generate(prompt, 6, Sampling(temperature=1.0, top_k=1, seed=3)).tokens == greedy
    first = decoder.generate(prompt, 6, Sampling(temperature=1.5, top_p=0.9, seed=7)).tokens
    assert decoder.generate(prompt, 6, Sampling(temperature=1.5, top_p=0.9, seed=7)).tokens == first
    with pytest.raises(UnsupportedModelError, match="top_p"):
        Sampling(temperature=1.0, top_p=0.0)


def test_generation_stops_at_end_of_sequence(llama):
    _, graph = llama
    prompt = _prompt()
    tokens = generate(graph, prompt, max_new_tokens=6).tokens
    stopped = Decoder(graph, OrtRunner(graph)).generate(prompt, 6, eos=tokens[2])
    assert stopped.tokens == tokens[:3]


def test_a_model_without_cache_is_refused():
    from tiny_models import MLP

    graph = capture(MLP().eval(), example_inputs=(torch.randn(2, 16),))
    with pytest.raises(UnsupportedModelError, match="KV cache"):
        decoder_for(graph)


def test_decoder_from_the_legacy_exporter_is_found_and_generates(llama, tmp_path):
    """torch's TorchScript exporter writes each past as a chain of two Concats."""
    from sparc.capture.causal_lm import _with_cache

    model, graph = llama
    wrapper = _with_cache(model, 2)
    names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{part}" for i in range(2) for part in ("key", "value")]
    outputs = ["logits"] + [f"present.{i}.{part}" for i in range(2) for part in ("key", "value")]
    axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "t"}, "position_ids": {0: "b", 1: "s"},
            **{n: {0: "b", 2: "p"} for n in names[3:]}, **{n: {0: "b", 2: "t"} for n in outputs[1:]}}
    args = (torch.ones(1, 3, dtype=torch.int64), torch.ones(1, 8, dtype=torch.int64), torch.arange(5, 8)[None],
            [torch.zeros(1, 2, 5, 16) for _ in range(4)])
    path = tmp_path / "legacy.onnx"
    with torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), dynamo=False, input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=17)
    legacy = load_onnx(path)
    assert len(find_kv_cache(legacy).pairs) == 4
    prompt = _prompt()
    assert generate(legacy, prompt, max_new_tokens=5).tokens == generate(graph, prompt, max_new_tokens=5).tokens


def test_passes_keep_the_cache_shapes_and_generate(llama):
    model, _ = llama
    batches = [{"input_ids": np.asarray([_prompt(12, seed)])} for seed in range(6)]
    recipe = [sparc.passes.SliceRowsColumns(ratio=0.25), sparc.passes.ChannelCrop(ratio=0.25),
              sparc.passes.UnstructuredSparsity(density=0.5), sparc.passes.FuseSparseOps()]
    compiled = sparc.compile(model, calibration=batches, recipe=recipe, latency_rounds=0)
    kv = find_kv_cache(compiled.model)
    assert kv is not None and len(kv.pairs) == 4
    for value in compiled.model.graph.inputs:
        if value.name.startswith("past_key_values"):
            assert [d if isinstance(d, int) else "sym" for d in value.shape] == ["sym", 2, "sym", 16]
    result = generate(compiled, _prompt(), max_new_tokens=4)
    assert len(result.tokens) == 4


def test_token_router_refuses_a_decoder(llama):
    _, graph = llama
    batches = sparc.CalibrationData([{"input_ids": np.asarray([_prompt(12)])}])
    with pytest.raises(StructureError, match="KV cache"):
        sparc.passes.TokenRouter(keep=0.5, calibration=batches)(graph)


def test_time_generation_times_contestants_side_by_side(llama):
    _, graph = llama
    decoders = {"a": decoder_for(graph), "b": decoder_for(graph)}
    timing = time_generation(decoders, _prompt(), 4, rounds=2)
    assert timing.tokens["a"] == timing.tokens["b"] and len(timing.decode_ms_per_token["a"]) == 2
    assert "decode ms/token" in timing.to_markdown()


def test_cli_generate_prints_text_and_timings(tmp_path, capsys):
    from sparc.cli import main
    from sparc.eval import zoo

    tokenizer_folder = zoo.smollm2_folder()
    model = _tiny("llama", vocab=49152)
    path = tmp_path / "decoder.onnx"
    compiled = sparc.compile(model, recipe=[], validate=False)
    compiled.export(path)
    code = main(["generate", str(path), "--prompt", "Once upon a time", "--max-new-tokens", "5",
                 "--tokenizer", str(tokenizer_folder), "--ignore-eos"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("Once upon a time") and "decode" in out and "ms/token" in out
    code = main(["generate", str(path), "--prompt", "Once upon a time", "--max-new-tokens", "4",
                 "--tokenizer", str(tokenizer_folder), "--vs", str(path)])
    assert code == 1 and "same model" in capsys.readouterr().err


@pytest.mark.long
def test_smollm2_decoder_generates_hugging_face_greedy_text():
    from sparc.eval import zoo

    lm = zoo.smollm2().module.lm
    tokenizer = zoo.smollm2_tokenizer()
    graph = load_onnx(zoo.smollm2_kv_onnx())
    prompt = tokenizer("The history of the printing press")["input_ids"]
    with torch.no_grad():
        want = lm.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    got = generate(graph, prompt, max_new_tokens=24, tokenizer=tokenizer, stop_at_eos=False)
    assert got.tokens == want
