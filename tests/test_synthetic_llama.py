"""The random Llama generator (sparc.eval.synthetic_llama): the graph computes what Hugging
Face's LlamaForCausalLM computes with the same weights, files are reproducible, the writer's
memory stays bounded, and sparc's analyses and its 2:4 SparseGPT pass see a Llama."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

import sparc
from sparc.algorithms.sparsity import ANNOTATION_KEY
from sparc.analysis.blocks import find_blocks
from sparc.analysis.linear import find_linear_layers
from sparc.analysis.norms import find_norms
from sparc.analysis.transformer import find_transformer
from sparc.errors import SparcError
from sparc.eval.synthetic_llama import (
    PRESETS,
    LlamaShape,
    main,
    structure_model,
    weight_specs,
    write_random_llama,
)

TINY = PRESETS["tiny"]
# ORT and torch agree on float32 logits to rounding (observed ~1e-7 of the scale); 1e-5 of the
# logits' largest magnitude leaves room for kernel differences and none for a semantic error
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("tiny") / "model.onnx", TINY, seed=7)


def hugging_face_llama(path, shape: LlamaShape):
    """LlamaForCausalLM with ``shape``'s config and the weights of the file at ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, rms_norm_eps=shape.rms_eps,
                         rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
                         max_position_embeddings=256, tie_word_embeddings=False, attention_bias=False,
                         mlp_bias=False, hidden_act="silu", attn_implementation="eager")
    torch_model = LlamaForCausalLM(config).eval()
    model = ir.load(path)
    state = {}
    for name, value in model.graph.initializers.items():
        if name.endswith(".weight"):
            array = value.const_value.numpy()
            linear = array.ndim == 2 and name != "model.embed_tokens.weight"
            state[name] = torch.from_numpy(np.array(array.T if linear else array, order="C"))
    missing, unexpected = torch_model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return torch_model


def padded_batch(vocab: int, seed: int = 0):
    """Three rows of 9 tokens: unpadded, left-padded by 3, right-padded by 2."""
    ids = np.random.default_rng(seed).integers(0, vocab, (3, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, -2:] = 0
    return ids, mask


def ort_logits(path, ids, mask):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]


def test_logits_equal_hugging_face_llama_with_padding(tiny_path):
    ids, mask = padded_batch(TINY.vocab)
    ours = ort_logits(tiny_path, ids, mask)
    with torch.no_grad():
        theirs = hugging_face_llama(tiny_path, TINY)(input_ids=torch.from_numpy(ids),
                                                     attention_mask=torch.from_numpy(mask)).logits.numpy()
    real = mask.astype(bool)  # a padded query's logits are not defined the same way everywhere
    scale = np.abs(theirs[real]).max()
    error = np.abs(ours[real] - theirs[real]).max() / scale
    assert scale > 1.0 and error <= TOLERANCE, (scale, error)
    # the padding is honoured: the left-padded row's real tokens do not see the pads
    unmasked = ort_logits(tiny_path, ids, np.ones_like(mask))
    assert np.abs(unmasked[1, 3:] - ours[1, 3:]).max() > 100 * TOLERANCE * scale


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_path):
    again = write_random_llama(tmp_path / "model.onnx", TINY, seed=7)
    other = write_random_llama(tmp_path / "other.onnx", TINY, seed=8)
    for suffix in ("", ".data"):
        assert again.with_name(again.name + suffix).read_bytes() == tiny_path.with_name(tiny_path.name + suffix).read_bytes()
    assert other.with_name("other.onnx.data").read_bytes() != again.with_name("model.onnx.data").read_bytes()
    # the graph only names its data file, so apart from that name the two models are the same
    first, second = onnx.load(str(again), load_external_data=False), onnx.load(str(other), load_external_data=False)
    assert len(first.graph.node) == len(second.graph.node)


def test_weights_are_external_in_one_file_with_the_stated_distributions(tiny_path):
    proto = onnx.load(str(tiny_path), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    specs = weight_specs(TINY)
    assert [t.name for t in external] == [s.name for s in specs]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    assert sum(np.prod(s.shape) for s in specs) == TINY.parameters()
    onnx.checker.check_model(str(tiny_path), full_check=True)
    model = ir.load(tiny_path)
    for spec in specs:
        array = model.graph.initializers[spec.name].const_value.numpy()
        assert array.shape == spec.shape and array.dtype == np.float32
        assert abs(array.mean() - spec.mean) < 5 * spec.std / np.sqrt(array.size) + 1e-7, spec
        assert abs(array.std() / spec.std - 1) < 0.25, spec


def test_analyses_find_blocks_norms_and_seven_linear_layers_per_block(tiny_path):
    model = ir.load(tiny_path)
    blocks = find_blocks(model)
    assert len(blocks) == TINY.layers
    norms = find_norms(model)
    assert len(norms) == 2 * TINY.layers + 1 and {n.kind for n in norms.values()} == {"rms"}
    assert all(n.epsilon == pytest.approx(TINY.rms_eps) for n in norms.values())
    layers = find_linear_layers(model.graph)
    assert [layer.name for layer in layers[:7]] == [f"model.layers.0.{n}" for n in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert len(layers) == 7 * TINY.layers + 1 and layers[-1].name == "lm_head"
    structure = find_transformer(model)
    assert len(structure.branches) == 2 * TINY.layers and structure.head.name == "lm_head"
    assert [len(b.readers) for b in structure.branches[:2]] == [3, 2]


def test_compile_with_2_4_sparsegpt(tiny_path):
    batches = [dict(zip(("input_ids", "attention_mask"), padded_batch(TINY.vocab, seed))) for seed in range(4)]
    compiled = sparc.compile(tiny_path, calibration=batches, latency_rounds=0,
                             recipe=[sparc.passes.NMSparsity(n=2, m=4, method="sparsegpt")])
    layers = find_linear_layers(compiled.model.graph)
    sparse = [layer for layer in layers if ANNOTATION_KEY in layer.node.metadata_props]
    assert len(sparse) == 7 * TINY.layers  # the LM head (a graph output) stays dense by default
    for layer in sparse:
        groups = layer.weight_kn().T.reshape(layer.out_features, -1, 4)
        assert ((groups != 0).sum(-1) <= 2).all(), layer.name
        assert json.loads(layer.node.metadata_props[ANNOTATION_KEY])["method"] == "sparsegpt"
    outputs = compiled.run(batches[0])
    assert np.isfinite(outputs["logits"]).all()


def test_activations_stay_unit_scale_through_36_layers(tmp_path):
    """Narrow but as deep as large30: the hidden state grows like √(1 + 2·layer), the logits stay O(1)."""
    deep = LlamaShape(vocab=64, hidden=64, intermediate=160, layers=36, heads=4, kv_heads=4)
    path = write_random_llama(tmp_path / "model.onnx", deep, seed=1)
    ids, mask = padded_batch(deep.vocab)
    with torch.no_grad():
        out = hugging_face_llama(path, deep)(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                             output_hidden_states=True)
    # hidden_states[i] enters layer i (the last one is the final norm's output, left out); each
    # sublayer adds about unit variance: observed RMS ≈ 0.7·√(1 + 2i), 1.0 at the embedding
    real = torch.from_numpy(mask).bool()
    ratio = [float(h[real].pow(2).mean().sqrt()) / np.sqrt(1 + 2 * i) for i, h in enumerate(out.hidden_states[:-1])]
    assert len(ratio) == deep.layers and all(0.4 < r < 1.5 for r in ratio), ratio
    logits = ort_logits(path, ids, mask)
    assert np.isfinite(logits).all() and 0.3 < logits.std() < 3, logits.std()


WRITE_AND_MEASURE = """
import json, sys
from pathlib import Path
from sparc.eval.synthetic_llama import PRESETS, write_random_llama
from sparc.measure.memory import PeakMemory
with PeakMemory() as peak:
    write_random_llama(Path(sys.argv[1]) / "model.onnx", PRESETS["mid"], seed=0)
print(json.dumps({"start": peak.start, "peak": peak.bytes}))
"""


def test_writer_memory_stays_far_below_the_weights(tmp_path):
    """A fresh process writes the 451 MB "mid" model; its RSS grows by far less than the weights."""
    shape = PRESETS["mid"]
    result = subprocess.run([sys.executable, "-c", WRITE_AND_MEASURE, str(tmp_path)], capture_output=True,
                            text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["start"]
    data = (tmp_path / "model.onnx.data").stat().st_size
    assert shape.weight_bytes() <= data < shape.weight_bytes() + 4096 * len(weight_specs(shape))
    assert growth < 0.15 * shape.weight_bytes(), (growth, shape.weight_bytes())


def test_command_line_writes_a_preset_and_reports_bytes_time_and_memory(tmp_path, capsys):
    assert main(["--shape", "tiny", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"{TINY.weight_bytes():,} weight bytes" in printed and "peak RSS" in printed and " s, " in printed
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.onnx.data").is_file()


def test_invalid_shapes_and_missing_folders_raise_sparc_errors(tmp_path):
    with pytest.raises(SparcError, match="not divisible by kv_heads"):
        LlamaShape(vocab=8, hidden=64, intermediate=8, layers=1, heads=4, kv_heads=3)
    with pytest.raises(SparcError, match="odd"):
        LlamaShape(vocab=8, hidden=12, intermediate=8, layers=1, heads=4, kv_heads=4)
    with pytest.raises(SparcError, match="does not exist"):
        write_random_llama(tmp_path / "missing" / "model.onnx", TINY)
    large = PRESETS["large30"].weight_bytes()
    assert large == 30_191_796_224 and large >= 30e9 and large > 24 * 2**30


def test_onnx_runtime_accepts_the_large30_graph():
    """The 36-layer, 30 GB graph with its weights as inputs (nothing generated): ORT builds a
    session (graph resolution, type and shape inference, kernels) in a fraction of a second."""
    model = structure_model(PRESETS["large30"])
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()) == 2 + len(weight_specs(PRESETS["large30"]))
    assert session.get_outputs()[0].shape == ["batch", "seq", 32000]


@pytest.mark.long
def test_one_layer_at_large30_widths_equals_hugging_face(tmp_path):
    """large30's widths (32 heads of 128, 11008 MLP, 32000 vocab) cut to one layer (1.9 GB)."""
    shape = dataclasses.replace(PRESETS["large30"], layers=1)
    path = write_random_llama(tmp_path / "model.onnx", shape, seed=3)
    ids, mask = padded_batch(shape.vocab)
    ours = ort_logits(path, ids, mask)
    with torch.no_grad():
        theirs = hugging_face_llama(path, shape)(input_ids=torch.from_numpy(ids),
                                                 attention_mask=torch.from_numpy(mask)).logits.numpy()
    real = mask.astype(bool)
    scale = np.abs(theirs[real]).max()
    assert np.abs(ours[real] - theirs[real]).max() <= TOLERANCE * scale
