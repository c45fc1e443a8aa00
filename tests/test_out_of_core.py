"""Larger than memory: stages around blocks, the staged run, and out-of-core compiles."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import sparc
from sparc.analysis.blocks import find_segments
from sparc.analysis.stages import split_into_stages
from sparc.backends.onnxruntime import staged_outputs
from sparc.data import CalibrationData
from sparc.errors import BackendError, UnsupportedModelError
from sparc.ir_utils import copy_model
from sparc.measure.execute import run_batches
from sparc.measure.reducers import Gram
from sparc.measure.staged import StagedRun


@pytest.fixture(scope="module")
def minilm_file(minilm_ir, tmp_path_factory):
    """MiniLM with its weights in an external data file."""
    path = tmp_path_factory.mktemp("external") / "minilm.onnx"
    ir.save(copy_model(minilm_ir), path, external_data="minilm.onnx.data")
    return path


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_stages_hold_every_node_once_around_the_blocks(minilm_ir):
    model = copy_model(minilm_ir)
    blocks = find_segments(model)
    stages = split_into_stages(model, blocks)
    assert len(stages) == 2 * len(blocks) + 1
    assert [s.block.index for s in stages if s.block] == list(range(len(blocks)))
    placed = [node for stage in stages for node in stage.nodes]
    assert len(placed) == len(set(placed))
    assert set(placed) == {n for n in model.graph if n.op_type != "Constant"}


def test_a_staged_run_gives_the_whole_model_outputs(minilm_ir, minilm_batches):
    model = copy_model(minilm_ir)
    data = CalibrationData(minilm_batches[:2])
    staged = staged_outputs(model, data)
    whole = run_batches(model, data)
    for got, want in zip(staged, whole):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_a_staged_run_keeps_only_values_later_stages_read(minilm_ir, minilm_batches):
    model = copy_model(minilm_ir)
    stages = split_into_stages(model, find_segments(model))
    run = StagedRun(model, [s.nodes for s in stages], CalibrationData(minilm_batches[:1]))
    sizes = []
    for _ in range(len(stages) - 1):
        run.advance()
        sizes.append(len(run._local.state["live"][0]))
    assert max(sizes) < 12, sizes  # the hidden state and the mask values, not every activation


def test_exposing_a_stage_streams_its_values_and_keeps_nothing(minilm_ir, minilm_batches):
    model = copy_model(minilm_ir)
    stages = split_into_stages(model, find_segments(model))
    run = StagedRun(model, [s.nodes for s in stages], CalibrationData(minilm_batches[:2]))
    run.advance()
    layer_input = stages[1].block.input.name
    gram = Gram()
    run.expose(1, {layer_input: gram})
    assert gram.rows == sum(b["input_ids"].size for b in minilm_batches[:2])
    assert run.next == 1
    with pytest.raises(sparc.errors.CalibrationError, match="stages run in order"):
        run.expose(3, {layer_input: Gram()})


def test_out_of_core_compile_equals_in_memory_and_leaves_the_source_alone(minilm_file, minilm_batches, tmp_path):
    before = _digest(minilm_file.parent)
    recipe = [{"NMSparsity": {"n": 2, "m": 4, "method": "sparsegpt"}}]
    in_memory = sparc.compile(minilm_file, calibration=minilm_batches, recipe=recipe, out_of_core=False,
                              latency_rounds=0)
    streamed = sparc.compile(minilm_file, calibration=minilm_batches, recipe=recipe, out_of_core=True)
    assert "out of core" in str(streamed.report)
    assert "block by block" in str(streamed.report.passes[0].details["calibration"])
    in_memory.export(tmp_path / "a.onnx")
    streamed.export(tmp_path / "b.onnx")
    streamed.export(tmp_path / "c.onnx")  # a second export copies the first one's data
    a, b = onnx.load(tmp_path / "a.onnx"), onnx.load(tmp_path / "b.onnx")
    weights_a = {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in a.graph.initializer}
    weights_b = {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in b.graph.initializer}
    assert weights_a == weights_b
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(
        tmp_path / "b.onnx", load_external_data=False).graph.initializer)
    assert _digest(minilm_file.parent) == before
    batch = minilm_batches[-1]
    got, want = streamed.run(batch), in_memory.run(batch)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)
    reopened = sparc.load(tmp_path / "c.onnx").run(batch)
    for name in want:
        np.testing.assert_allclose(reopened[name], want[name], rtol=0, atol=1e-5)


def test_out_of_core_needs_a_path_and_the_onnxruntime_backend(minilm_ir, minilm_file):
    with pytest.raises(UnsupportedModelError, match="ONNX file path"):
        sparc.compile(copy_model(minilm_ir), recipe=[], out_of_core=True)
    with pytest.raises(BackendError, match="out-of-core"):
        sparc.compile(minilm_file, recipe=[], backend="tvm", out_of_core=True)


def test_a_staged_run_holds_about_one_block_of_mapped_weights(tmp_path):
    """24 blocks of 13.6 MB: running every stage over memory-mapped weights must not keep
    them resident (the mappings are released stage by stage)."""
    from sparc.capture import load_onnx
    from sparc.eval.synthetic_llama import LlamaShape, write_random_llama
    from sparc.measure.memory import PeakMemory

    shape = LlamaShape(vocab=256, hidden=512, intermediate=1536, layers=24, heads=8, kv_heads=8)
    path = write_random_llama(tmp_path / "deep.onnx", shape)
    model = load_onnx(path, mapped=True)
    data = CalibrationData([{"input_ids": np.arange(64, dtype=np.int64)[None] % 256,
                             "attention_mask": np.ones((1, 64), np.int64)}])
    with PeakMemory() as peak:
        staged_outputs(model, data)
    if peak.bytes is None:
        pytest.fail("peak RSS is not measurable here (/proc missing)")
    assert peak.bytes - peak.start < 0.35 * shape.weight_bytes(), (peak.bytes - peak.start, shape.weight_bytes())


def test_the_cli_compiles_out_of_core(minilm_file, minilm_npz, tmp_path):
    from sparc.cli import main

    out = tmp_path / "out.onnx"
    assert main(["compile", str(minilm_file), "-o", str(out), "--calib", str(minilm_npz), "--batch-size", "4",
                 "--recipe", str(_recipe(tmp_path)), "--out-of-core", "--report", str(tmp_path / "report.md")]) == 0
    assert (tmp_path / "out.onnx.data").exists()
    assert "out of core" in (tmp_path / "report.md").read_text()


def _recipe(folder):
    path = folder / "recipe.yaml"
    path.write_text("passes:\n  - NMSparsity: {n: 2, m: 4, method: wanda}\n")
    return path


@pytest.mark.parametrize("where", ["in-process shards", "ray"])
def test_a_staged_run_on_two_workers_equals_one_process(minilm_ir, minilm_batches, where):
    from sparc.distributed import InProcess, RayEngine

    model = copy_model(minilm_ir)
    stages = [s.nodes for s in split_into_stages(model, find_segments(model))]
    data = CalibrationData(minilm_batches[:3])
    engine = InProcess(workers=2) if where == "in-process shards" else RayEngine("local", workers=2)
    try:
        results = []
        for on in (None, engine):
            run = StagedRun(model, stages, data, engine=on, outputs=True)
            run.advance()
            gram = Gram()
            run.expose(1, {stages[1][0].inputs[0].name: gram})
            while run.next < len(stages):
                run.advance()
            results.append((gram, run.outputs()))
            run.close()
    finally:
        engine.close()
    (one, outputs_one), (two, outputs_two) = results
    assert one.rows == two.rows
    np.testing.assert_allclose(two.matrix, one.matrix, rtol=0, atol=1e-12 * np.abs(one.matrix).max())
    for a, b in zip(outputs_one, outputs_two):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
