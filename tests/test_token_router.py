"""TokenRouter: block analysis, exact routing against a torch reference, real MiniLM/SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import MLP, TinyGPT, seeded

import sparc
from sparc.analysis.blocks import find_blocks
from sparc.capture import capture_torch
from sparc.data import CalibrationData
from sparc.errors import PassError, RecipeError, StructureError
from sparc.eval import datasets, zoo
from sparc.ir_utils import copy_model
from sparc.passes import TokenRouter, build_pass
from sparc.runtime import OrtRunner


def _gpt(layers=3):
    model = seeded(TinyGPT, layers=layers)
    rng = np.random.default_rng(0)
    batches = [{"input_ids": rng.integers(0, 97, (2, 16))} for _ in range(4)]
    example = (torch.tensor(batches[0]["input_ids"]),)
    captured = capture_torch(model, example, {"input_ids": {0: "batch", 1: "seq"}})
    return model, captured, batches


def _routed(captured, batches, **options):
    model = copy_model(captured)
    router = TokenRouter(calibration=CalibrationData(batches), **options)
    router(model)
    return model, router


def _torch_norm_routing(model: TinyGPT, ids: np.ndarray, keep: float, start: int) -> np.ndarray:
    """Reference: from block ``start`` on, each block runs on the top-k tokens by ‖h‖ (token
    0 always kept), in order; the others keep their hidden state."""
    with torch.no_grad():
        tokens = torch.tensor(ids)
        x = model.tok(tokens) + model.pos(torch.arange(tokens.shape[1]).unsqueeze(0))
        n = tokens.shape[1]
        k = int(np.ceil(keep * n))
        for index, block in enumerate(model.blocks):
            if index < start:
                x = block(x)
                continue
            out = x.clone()
            for row in range(x.shape[0]):
                score = x[row].norm(dim=-1)
                score[0] = float("inf")
                kept = torch.sort(torch.topk(score, k).indices).values
                out[row, kept] = block(x[row : row + 1, kept])[0]
            x = out
        return (model.ln_f(x) @ model.tok.weight.T).numpy()


# block analysis -----------------------------------------------------------------------------


def test_blocks_of_a_pre_norm_decoder():
    _, captured, _ = _gpt(layers=3)
    blocks = find_blocks(captured)
    assert len(blocks) == 3
    assert blocks[1].input is blocks[0].output
    final = next(n for n in captured.graph if n.op_type == "LayerNormalization" and n.inputs[0] is blocks[-1].output)
    assert final is not None  # the last block ends at the final norm's input


def test_blocks_of_the_real_post_norm_minilm(minilm_ir):
    blocks = find_blocks(minilm_ir)
    assert len(blocks) == 6
    assert all(b.output.producer().op_type == "LayerNormalization" for b in blocks)
    assert [b.softmax.op_type for b in blocks] == ["Softmax"] * 6


def test_a_model_without_attention_has_no_blocks():
    captured = capture_torch(seeded(MLP), (torch.randn(2, 16),))
    with pytest.raises(StructureError, match="no attention Softmax"):
        find_blocks(captured)


# exact routing ---------------------------------------------------------------------------------


def test_norm_router_matches_the_torch_reference_per_row():
    model, captured, batches = _gpt(layers=3)
    routed, router = _routed(captured, batches, keep=0.5, start_block=1, router="norm")
    assert [r["block"] for r in router.details["routers"]] == [1, 2]
    got = OrtRunner(routed).run(batches[1])
    want = _torch_norm_routing(model, batches[1]["input_ids"], keep=0.5, start=1)
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-4, atol=1e-4)


def test_other_sequence_lengths_and_the_causal_mask_follow_the_kept_tokens():
    model, captured, batches = _gpt(layers=2)
    routed, _ = _routed(captured, batches, keep=0.3, start_block=1, router="norm")
    ids = np.random.default_rng(5).integers(0, 97, (3, 23))
    got = next(iter(OrtRunner(routed).run({"input_ids": ids}).values()))
    np.testing.assert_allclose(got, _torch_norm_routing(model, ids, keep=0.3, start=1), rtol=1e-4, atol=1e-4)


def test_keeping_every_token_is_exact():
    _, captured, batches = _gpt(layers=2)
    routed, router = _routed(captured, batches, keep=0.99, start_block=0, router="learned")
    want = OrtRunner(captured).run(batches[0])
    got = OrtRunner(routed).run(batches[0])
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    assert router.details["routers"][0]["tokens_at_calibration_length"] == "16/16"


# options and refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"keep": 0.0}, "'keep' must be > 0"),
        ({"keep": 1.5}, "'keep' must be <= 1"),
        ({"keep": []}, "empty list"),
        ({"router": "random"}, "'router' must be one of"),
        ({"keep_tokens": "0"}, "'keep_tokens' must be a list"),
        ({"start_block": 1.5}, "fraction of depth"),
        ({"hidden": 0}, "'hidden' must be >= 1"),
    ],
)
def test_bad_options_name_the_option(options, message):
    with pytest.raises(RecipeError, match=message):
        TokenRouter(**options)


def test_refusals_are_clear():
    _, captured, batches = _gpt(layers=3)
    with pytest.raises(RecipeError, match="start_block must be ≥ 1"):
        _routed(captured, batches, router="attention", start_block=0)
    with pytest.raises(RecipeError, match="keep lists 3 fractions; blocks 2"):
        _routed(captured, batches, keep=[0.5, 0.5, 0.5], start_block=1)
    with pytest.raises(RecipeError, match="outside the model's 3 blocks"):
        _routed(captured, batches, start_block=3)
    mlp = capture_torch(seeded(MLP), (torch.randn(2, 16),))
    with pytest.raises(PassError, match="TokenRouter.*no attention Softmax"):
        sparc.compile(mlp, calibration=[{mlp.graph.inputs[0].name: np.ones((2, 16), np.float32)}],
                      recipe=[TokenRouter()], latency_rounds=0)


def test_a_hidden_state_read_outside_the_blocks_is_refused():
    _, captured, batches = _gpt(layers=2)
    inner = next(n for n in captured.graph if n.op_type == "Softmax").outputs[0]
    captured.graph.outputs.append(inner)
    with pytest.raises(StructureError, match="read by a graph output outside"):
        _routed(captured, batches, start_block=0)


def test_recipe_builds_the_pass():
    router = build_pass("TokenRouter", {"keep": [0.7, 0.5], "start_block": 0.5, "router": "norm"})
    assert router.keep == (0.7, 0.5) and router.start_block == 0.5


# the real MiniLM ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def padded_sentences(minilm):
    """Short review sentences padded to 48 tokens: most rows are half padding."""
    texts, _ = datasets.polarity_sentences()
    return minilm.batches(texts[:24], 8, seq=48)


def test_minilm_padding_is_never_kept_before_real_tokens(minilm_ir, padded_sentences):
    """Rows with no more real tokens than k keep all of them, and padding is masked, so their
    embeddings equal the dense ones exactly; longer rows change."""
    routed, router = _routed(minilm_ir, padded_sentences, keep=0.5, start_block=2, router="learned")
    record = router.details["routers"][0]
    assert record["padding_masks"] and record["patched_shapes"]
    assert record["held_out_recall"]["learned"] > record["held_out_recall"]["norm"]
    feeds = padded_sentences[0]
    dense = next(iter(OrtRunner(minilm_ir).run(feeds).values()))
    got = next(iter(OrtRunner(routed).run(feeds).values()))
    short = feeds["attention_mask"].sum(axis=1) <= 24
    assert short.any() and (~short).any()
    np.testing.assert_allclose(got[short], dense[short], rtol=1e-4, atol=1e-5)
    assert np.abs(got[~short] - dense[~short]).max() > 1e-3


def test_minilm_compile_reports_kept_tokens_and_saved_macs(minilm_ir, minilm_batches, tmp_path):
    compiled = sparc.compile(minilm_ir, calibration=minilm_batches,
                             recipe=[TokenRouter(keep=0.5, start_block=2)], latency_rounds=0)
    entry = compiled.report.passes[-1]
    assert entry.details["keep_per_block"] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    assert entry.stats.macs < 0.8 * compiled.report.original.macs
    path = tmp_path / "routed.onnx"
    compiled.export(path)
    reloaded = OrtRunner(str(path)).run(minilm_batches[0])
    expected = compiled.run(minilm_batches[0])
    for name, array in expected.items():
        np.testing.assert_allclose(reloaded[name], array, rtol=1e-5, atol=1e-6)


# the real SmolLM2 (rotary tables, GQA, causal + padding mask) -------------------------------------


def test_smollm2_routes_rotary_tables_and_masks():
    from sparc.capture import load_onnx

    model = load_onnx(zoo.smollm2_onnx())
    windows = [np.arange(1000, 1064, dtype=np.int64)[None] + 7 * i for i in range(2)]
    batches = [{"input_ids": w, "attention_mask": np.ones_like(w)} for w in windows]
    exact, _ = _routed(model, batches, keep=[0.99, 0.99], start_block=28, router="norm")
    dense = OrtRunner(model).run(batches[0])
    got = OrtRunner(exact).run(batches[0])
    name = next(iter(dense))
    np.testing.assert_allclose(got[name], dense[name], rtol=1e-4, atol=1e-3)
    routed, router = _routed(model, batches, keep=[0.5, 0.5], start_block=28, router="norm")
    record = router.details["routers"][0]
    assert len(record["gathered"]) == 4  # hidden state, cos and sin tables, causal+padding mask
    assert len(record["patched_shapes"]) == 4
    logits = OrtRunner(routed).run(batches[1])[name]
    assert logits.shape == (1, 64, 49152) and np.isfinite(logits).all()


def test_routed_minilm_gives_the_same_outputs_in_onnxruntime_web(minilm_ir, padded_sentences, tmp_path):
    """The exported routed model, run by onnxruntime-web (WebAssembly) in Node.js."""
    from sparc.backends import ort_web

    compiled = sparc.compile(minilm_ir, calibration=padded_sentences,
                             recipe=[TokenRouter(keep=0.5, start_block=2)], latency_rounds=0)
    path = compiled.export(tmp_path / "routed.onnx")
    feeds = padded_sentences[1]
    expected = compiled.run(feeds)
    got = ort_web.run({"routed": path}, feeds).outputs["routed"]
    assert set(got) == set(expected)
    for name, array in expected.items():
        np.testing.assert_allclose(got[name], array, rtol=1e-4, atol=1e-5)


def test_routed_graph_output_keeps_its_type_on_a_legacy_export_without_value_info(tmp_path):
    """paraphrase-MiniLM-L3 from a pip wheel (legacy exporter, no value_info): its token
    embeddings are a graph output written by the last routed block; after routing that output
    still declares its type and the exported file passes the full ONNX check."""
    import onnx

    minilm = zoo.minilm()
    batches = minilm.batches(datasets.lee_background()[:24], 8, seq=64)
    compiled = sparc.compile(str(zoo.paraphrase_minilm_onnx()), calibration=batches,
                             recipe=[TokenRouter(keep=0.5, start_block=1)], latency_rounds=0)
    path = compiled.export(tmp_path / "routed.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    outputs = {o.name: o for o in onnx.load(str(path)).graph.output}
    assert outputs["onnx::Shape_422"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
