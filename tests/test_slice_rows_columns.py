"""SliceRowsColumns: SliceGPT on RMSNorm and LayerNorm streams, and MLP-unit slicing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from tiny_models import MLP, TinyGPT, seeded

import sparc
from sparc.analysis.transformer import find_transformer
from sparc.capture import capture_torch
from sparc.errors import PassError, RecipeError, StructureError
from sparc.eval import zoo
from sparc.passes import SliceRowsColumns
from sparc.runtime import OrtRunner


def tiny_llama(tie=True):
    """A 2-layer Llama (RMSNorm, GQA, rotary, SiLU MLP) with random weights, from transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=tie, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm scales
        for module in model.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.weight.uniform_(0.5, 1.5)

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = model

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return Logits().eval()


def lm_batches(count, batch=2, seq=12, vocab=96, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"input_ids": rng.integers(0, vocab, (batch, seq)), "attention_mask": np.ones((batch, seq), np.int64)}
        for _ in range(count)
    ]


AXES = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}


@pytest.fixture(scope="module")
def llama_ir():
    module = tiny_llama()
    example = zoo.torch_inputs(lm_batches(1)[0])
    return module, capture_torch(module, example, AXES)


@pytest.fixture(scope="module")
def gpt_ir():
    module = seeded(TinyGPT)
    return module, capture_torch(module, (torch.randint(0, 97, (2, 8)),), {"input_ids": {0: "b", 1: "s"}})


def matrix_params(model) -> int:
    """Elements of the 2-D float initializers (the weight matrices)."""
    return sum(
        v.const_value.size
        for v in model.graph.initializers.values()
        if len(v.shape) == 2 and v.dtype.is_floating_point()
    )


def _compile(model, recipe, calibration):
    return sparc.compile(model, calibration=calibration, recipe=recipe, latency_rounds=0)


def _gpt_batches(count, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, 97, (3, 10))} for _ in range(count)]


# structure analysis ---------------------------------------------------------------------


def test_llama_structure(llama_ir):
    _, model = llama_ir
    structure = find_transformer(model)
    assert len(structure.branches) == 4 and structure.hidden == 64
    assert {n.kind for n in structure.norms} == {"rms"}
    assert [len(b.readers) for b in structure.branches] == [3, 2, 3, 2]  # q,k,v / gate,up
    assert structure.head_tied  # the exporter folded Transpose(E) into a copy: still tied


def test_gpt_structure(gpt_ir):
    _, model = gpt_ir
    structure = find_transformer(model)
    assert len(structure.embeddings) == 2  # token and position tables
    assert {n.kind for n in structure.norms} == {"layer"}
    assert [b.writer.bias is not None for b in structure.branches] == [True] * 4


def test_post_norm_model_is_refused_with_the_reason(minilm_ir):
    with pytest.raises(StructureError, match="post-norm model"):
        find_transformer(minilm_ir)


# rotated but unsliced: exact --------------------------------------------------------------


@pytest.mark.parametrize("rotation", ["per_layer", "shared"])
def test_rotation_without_slicing_is_exact_on_rmsnorm(llama_ir, rotation):
    module, model = llama_ir
    compiled = _compile(model, [SliceRowsColumns(ratio=0.0, rotation=rotation)], lm_batches(4))
    details = compiled.report.passes[-1].details
    assert details["kept"] == 64 and details["norm"] == "rms"
    assert details["shortcuts"] == (4 if rotation == "per_layer" else 0)
    assert details["head"] == ("untied" if rotation == "per_layer" else "tied")
    for feeds in lm_batches(2, batch=3, seq=17, seed=5):  # other batch and sequence sizes
        with torch.no_grad():
            want = module(**zoo.torch_inputs(feeds)).numpy()
        np.testing.assert_allclose(compiled(feeds), want, rtol=1e-4, atol=2e-5)
    assert not any(n.op_type == "Pow" for n in compiled.model.graph)  # norms were replaced


@pytest.mark.parametrize("rotation", ["per_layer", "shared"])
def test_rotation_without_slicing_is_exact_on_layernorm(gpt_ir, rotation):
    module, model = gpt_ir
    compiled = _compile(model, [SliceRowsColumns(ratio=0.0, rotation=rotation)], _gpt_batches(4))
    details = compiled.report.passes[-1].details
    assert details["norm"] == "layer" and details["head"] == "untied"
    ids = np.random.default_rng(9).integers(0, 97, (2, 21))
    with torch.no_grad():
        want = module(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(compiled(ids), want, rtol=1e-4, atol=2e-5)
    assert not any(n.op_type == "LayerNormalization" for n in compiled.model.graph)


def test_shared_initializers_are_never_corrupted():
    """Weights shared by layers of different blocks each get their own rotated copy."""
    module = seeded(TinyGPT)
    module.blocks[1].up = module.blocks[0].up  # one initializer read by two blocks' readers
    module.blocks[1].o = module.blocks[0].o  # and by two blocks' writers
    model = capture_torch(module, (torch.randint(0, 97, (2, 8)),), {"input_ids": {0: "b", 1: "s"}})
    shared = [v for v in model.graph.initializers.values() if len(v.uses()) > 1 and len(v.shape or ()) == 2]
    assert shared, "the exporter should have shared the weights"
    compiled = _compile(model, [SliceRowsColumns(ratio=0.0)], _gpt_batches(4))
    ids = np.random.default_rng(3).integers(0, 97, (2, 9))
    with torch.no_grad():
        want = module(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(compiled(ids), want, rtol=1e-4, atol=2e-5)


# sliced -------------------------------------------------------------------------------------


def test_sliced_llama_shapes_parameters_and_stock_ort(llama_ir, tmp_path):
    _, model = llama_ir
    compiled = _compile(model, [SliceRowsColumns(ratio=0.25, rotation="per_layer")], lm_batches(6))
    entry = compiled.report.passes[-1]
    d, k, ffn, vocab, kv = 64, 48, 96, 96, 32
    per_layer = k * (d + kv + kv) + d * k + k * ffn * 2 + ffn * k  # q,k,v readers; o; gate,up; down
    shortcuts = 4 * k * k
    embeddings = 2 * vocab * k  # untied: embedding table and head
    assert matrix_params(compiled.model) == 2 * per_layer + shortcuts + embeddings
    assert entry.stats.params - matrix_params(compiled.model) < 32  # rotary table, eps, 1/D
    assert entry.stats.macs < compiled.report.original.macs
    path = compiled.export(tmp_path / "sliced.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    feeds = lm_batches(1, batch=1, seq=7, seed=2)[0]
    stock = OrtRunner(path).run(feeds)
    np.testing.assert_allclose(list(stock.values())[0], compiled(feeds), rtol=1e-5, atol=1e-5)
    widths = {v.shape[-1] for n in compiled.model.graph if n.op_type == "Add" for v in n.outputs if v.shape and len(v.shape) == 3}
    assert k in widths and d not in widths


def test_shared_rotation_keeps_the_head_tied(llama_ir):
    _, model = llama_ir
    compiled = _compile(model, [SliceRowsColumns(ratio=0.25, rotation="shared")], lm_batches(6))
    entry = compiled.report.passes[-1]
    assert entry.details["head"] == "tied" and entry.details["shortcuts"] == 0
    d, k, ffn, vocab, kv = 64, 48, 96, 96, 32
    per_layer = k * (d + kv + kv) + d * k + k * ffn * 2 + ffn * k
    assert matrix_params(compiled.model) == 2 * per_layer + vocab * k + k * k  # one table + M
    untied = _compile(model, [SliceRowsColumns(ratio=0.25, rotation="shared", tie_head=False)], lm_batches(6))
    assert untied.report.passes[-1].details["head"] == "untied"


def test_schedule_and_round_to(llama_ir):
    _, model = llama_ir
    schedule = [0.0, 0.25, 0.25, 0.5, 0.5]
    compiled = _compile(model, [SliceRowsColumns(schedule=schedule, round_to=16)], lm_batches(4))
    assert compiled.report.passes[-1].details["kept"] == [64, 48, 48, 32, 32]
    with pytest.raises(PassError, match="schedule has 2 ratios; this model has 5 stream values"):
        _compile(model, [SliceRowsColumns(schedule=[0.1, 0.2])], lm_batches(4))


def test_bad_options():
    with pytest.raises(RecipeError, match="'ratio' must be <= 0.95"):
        SliceRowsColumns(ratio=1.5)
    with pytest.raises(RecipeError, match="'target' must be one of"):
        SliceRowsColumns(target="heads")
    with pytest.raises(RecipeError, match="needs rotation='per_layer'"):
        SliceRowsColumns(schedule=[0.1], rotation="shared")


def test_needs_calibration(llama_ir):
    _, model = llama_ir
    with pytest.raises(PassError, match="SliceRowsColumns needs calibration data"):
        sparc.compile(model, recipe=[SliceRowsColumns()], example_inputs=lm_batches(1)[0])


def test_post_norm_graph_is_left_alone_or_refused_when_strict(minilm_ir, minilm_batches):
    compiled = _compile(minilm_ir, [SliceRowsColumns(ratio=0.25)], minilm_batches)
    entry = compiled.report.passes[-1]
    assert not entry.modified and "post-norm model" in entry.details["skipped"]
    assert entry.stats.params == compiled.report.original.params
    with pytest.raises(PassError, match="post-norm model"):
        _compile(minilm_ir, [SliceRowsColumns(ratio=0.25, strict=True)], minilm_batches)


# target="ffn" ------------------------------------------------------------------------------


def test_ffn_slicing_equals_the_mlp_with_removed_channels_at_their_mean():
    module = seeded(MLP, 16, 64, 8)
    model = capture_torch(module, (torch.randn(2, 16),), {"x": [0]})
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((32, 16)).astype(np.float32)} for _ in range(5)]
    compiled = _compile(model, [SliceRowsColumns(ratio=0.5, target="ffn")], calib)
    assert compiled.report.passes[-1].details == {"units": 1, "channels": 64, "kept": 32}
    w1 = module.fc1.weight.detach().numpy()  # [64, 16]
    new_w1 = next(v.const_value.numpy() for v in compiled.model.graph.initializers.values() if v.shape.dims in ((32, 16), (16, 32)))
    new_w1 = new_w1 if new_w1.shape == (32, 16) else new_w1.T
    keep = [int(np.argmin(np.abs(w1 - row).sum(1))) for row in new_w1]
    removed = np.setdiff1d(np.arange(64), keep)
    hidden = lambda x: np.maximum(x @ w1.T + module.fc1.bias.detach().numpy(), 0)  # noqa: E731
    mean = np.concatenate([hidden(b["x"]) for b in calib[:4]]).mean(0)  # the last batch validates
    x = rng.standard_normal((6, 16)).astype(np.float32)
    h = hidden(x)
    h[:, removed] = mean[removed]
    want = h @ module.fc2.weight.detach().numpy().T + module.fc2.bias.detach().numpy()
    np.testing.assert_allclose(compiled(x), want, rtol=1e-4, atol=1e-5)


def test_ffn_slicing_on_llama_silu_units(llama_ir):
    _, model = llama_ir
    compiled = _compile(model, [SliceRowsColumns(ratio=0.5, target="ffn")], lm_batches(4))
    assert compiled.report.passes[-1].details == {"units": 2, "channels": 96, "kept": 48}
    removed = 2 * 3 * 64 * 48  # two layers: gate, up and down lose 48 channels each
    assert matrix_params(compiled.model) == matrix_params(compiled.original) - removed


def test_ffn_slicing_on_minilm_keeps_quality(minilm, minilm_ir):
    from sparc.eval import datasets, quality
    from sparc.eval.quality import encoder

    calib = minilm.batches(datasets.lee_background()[:48], 8, seq=64)
    compiled = _compile(minilm_ir, [SliceRowsColumns(ratio=0.25, target="ffn")], calib)
    assert compiled.report.passes[-1].details["kept"] == 1152
    original = OrtRunner(compiled.original)
    dense = quality.lee_correlation(encoder(lambda f: list(original.run(f).values())[0], minilm))
    sliced = quality.lee_correlation(encoder(compiled, minilm))
    assert sliced > dense - 0.03


# the real SmolLM2-135M ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_path():
    return zoo.smollm2_onnx()


@pytest.fixture(scope="module")
def smollm2_text():
    from transformers import AutoTokenizer

    from sparc.eval import datasets, quality

    tokenizer = AutoTokenizer.from_pretrained(zoo.smollm2_folder())
    calib = quality.token_windows(tokenizer, "\n\n".join(datasets.enwiki_articles()[:10]), window=128, count=6)
    evaluation = quality.token_windows(tokenizer, datasets.wikipedia_leads(), window=128, count=3)
    return [quality.window_feeds(w) for w in calib], evaluation


def test_smollm2_from_onnx_rotation_is_exact_and_slicing_keeps_it_usable(smollm2_path, smollm2_text):
    from sparc.eval import quality

    calib, evaluation = smollm2_text
    exact = _compile(str(smollm2_path), [SliceRowsColumns(ratio=0.0, rotation="shared")], calib)
    assert exact.report.passes[-1].error.max_rel < 1e-4
    original = OrtRunner(exact.original)
    dense_ppl = quality.perplexity(lambda f: list(original.run(f).values())[0], evaluation)
    assert quality.perplexity(exact, evaluation) == pytest.approx(dense_ppl, rel=1e-4)
    sliced = _compile(str(smollm2_path), [SliceRowsColumns(ratio=0.2, rotation="shared")], calib)
    details = sliced.report.passes[-1].details
    assert details["branches"] == 60 and details["kept"] == 456 and details["head"] == "tied"
    assert sliced.report.final.params < 0.85 * sliced.report.original.params
    assert quality.perplexity(sliced, evaluation) < 6 * dense_ppl


def test_smollm2_captured_from_torch_with_dynamic_sequence(smollm2_path):
    model = zoo.smollm2()
    captured = sparc.capture.load_onnx(smollm2_path)  # the cached torch capture
    assert [str(d) for d in captured.graph.inputs[0].shape] == ["batch", "seq"]
    feeds = model.make_inputs(["The capital of France is", "Hello"], seq=None)
    with torch.no_grad():
        want = model.module(**zoo.torch_inputs(feeds)).numpy()
    got = list(OrtRunner(captured).run(feeds).values())[0]
    mask = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-3)


def test_channel_crop_of_named_groups_after_slicing(llama_ir):
    """Slicing adds mixing matrices whose groups have nothing for activation importance to score;
    a ChannelCrop that names other groups (as tune's recipes do) leaves them alone."""
    from sparc.passes import ChannelCrop

    _, model = llama_ir
    recipe = [SliceRowsColumns(ratio=0.25),
              ChannelCrop(ratio={"*layers.0.mlp.gate_proj": 0.5}, importance="activation", round_to=1)]
    compiled = sparc.compile(model, recipe=recipe, calibration=lm_batches(4), latency_rounds=0)
    assert compiled.report.passes[-1].details["pruned"] == ["lm.model.layers.0.mlp.gate_proj: 96 -> 48"]
