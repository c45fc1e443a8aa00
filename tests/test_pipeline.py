"""Pipeline: passes run in order, each result is verified, failures name the pass."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from tiny_models import MLP, seeded

import sparc
from sparc.capture import capture
from sparc.data import CalibrationData
from sparc.errors import PassError
from sparc.ir_utils import set_initializer
from sparc.passes import FoldConstants, Pipeline, RemoveUnused
from sparc.passes.base import SparcPass


def _mlp_model():
    return capture(seeded(MLP), example_inputs=(torch.randn(2, 16),), dynamic_axes={"x": [0]})


def _data(batches=3):
    rng = np.random.default_rng(0)
    return CalibrationData([{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(batches)])


def _first_weight(model) -> ir.Value:
    return next(v for v in model.graph.initializers.values() if len(v.shape) == 2)


class Explodes(SparcPass):
    def call(self, model):
        raise ValueError("boom")


class ScalesWeight(SparcPass):
    """Changes the outputs; lossless unless told otherwise."""

    def __init__(self, *, factor: float = 2.0, **common):
        super().__init__(**common)
        self.factor = factor

    def call(self, model):
        weight = _first_weight(model)
        set_initializer(model.graph, weight, weight.const_value.numpy() * self.factor)
        return ir.passes.PassResult(model, modified=True)


class LossyScale(ScalesWeight):
    lossless = False


class BreaksChecker(SparcPass):
    def call(self, model):
        relu = next(n for n in model.graph if n.op_type == "Relu")
        relu.attributes["not_an_attribute"] = ir.AttrInt64("not_an_attribute", 1)
        return ir.passes.PassResult(model, modified=True)


class WritesNaN(SparcPass):
    lossless = False

    def call(self, model):
        weight = _first_weight(model)
        set_initializer(model.graph, weight, np.full(weight.shape.numpy(), np.nan, np.float32))
        return ir.passes.PassResult(model, modified=True)


class WantsCalibration(SparcPass):
    needs_calibration = True
    lossless = False

    def call(self, model):
        return ir.passes.PassResult(model, modified=False)


def test_clean_passes_run_and_are_reported():
    data = _data()
    result = Pipeline([FoldConstants(), RemoveUnused()], validation=data).run(_mlp_model())
    assert [e.name for e in result.entries] == ["FoldConstants", "RemoveUnused"]
    assert all(e.error.max_abs == 0.0 for e in result.entries)
    assert result.entries[-1].stats.params == 16 * 32 + 32 + 32 * 8 + 8
    assert result.entries[-1].stats.macs == 4 * (16 * 32 + 32 * 8)


def test_exception_inside_a_pass_names_it_and_the_passes_before():
    with pytest.raises(PassError) as info:
        Pipeline([FoldConstants(), RemoveUnused(), Explodes()], validation=_data()).run(_mlp_model())
    assert info.value.pass_name == "Explodes"
    assert info.value.previous == ["FoldConstants", "RemoveUnused"]
    assert "ValueError: boom" in str(info.value)


def test_checker_failure_is_surfaced():
    with pytest.raises(PassError, match="BreaksChecker.*ONNX checker rejects"):
        Pipeline([BreaksChecker()], validation=_data()).run(_mlp_model())


def test_lossless_pass_that_changes_outputs_fails():
    with pytest.raises(PassError, match="lossless pass changed the outputs"):
        Pipeline([ScalesWeight()], validation=_data()).run(_mlp_model())


def test_lossy_pass_within_and_beyond_max_error():
    result = Pipeline([LossyScale(factor=1.001)], validation=_data()).run(_mlp_model())
    assert 0 < result.entries[0].error.max_rel < 0.01
    with pytest.raises(PassError, match="exceeds max_error=0.01"):
        Pipeline([LossyScale(factor=3.0, max_error=0.01)], validation=_data()).run(_mlp_model())


def test_nan_outputs_fail():
    with pytest.raises(PassError, match="NaN or Inf"):
        Pipeline([WritesNaN()], validation=_data()).run(_mlp_model())


def test_missing_calibration_names_the_option():
    with pytest.raises(PassError, match="WantsCalibration needs calibration data: give calibration="):
        Pipeline([WantsCalibration()], validation=_data()).run(_mlp_model())
    # given through the pipeline, it runs
    Pipeline([WantsCalibration()], calibration=_data(), validation=_data()).run(_mlp_model())


def test_compile_wraps_pass_failures_and_keeps_the_source_intact(tmp_path):
    module = seeded(MLP)
    source = capture(module, example_inputs=(torch.randn(2, 16),))
    text = ir.to_onnx_text(source)
    with pytest.raises(PassError, match="Explodes"):
        sparc.compile(source, recipe=[Explodes()], example_inputs=(np.ones((2, 16), np.float32),))
    assert ir.to_onnx_text(source) == text


def test_fold_constants_folds_a_constant_subgraph():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
        a = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
        b = Constant <value = float[3] {0.5, 0.5, 0.5}> ()
        c = Mul(a, b)
        y = Add(x, c)
    }
    """
    model = sparc.capture.load_onnx(ir.from_onnx_text(text))
    data = CalibrationData([{"x": np.ones((2, 3), np.float32)}])
    Pipeline([FoldConstants(), RemoveUnused()], validation=data).run(model)
    assert [n.op_type for n in model.graph] == ["Add"]
    folded = model.graph.node(0).inputs[1]
    np.testing.assert_allclose(folded.const_value.numpy(), [0.5, 1.0, 1.5])


def test_a_pass_object_reused_across_compiles_gives_what_a_fresh_one_gives():
    """bind() takes each compile's data, and details start empty: nothing leaks between compiles."""
    from sparc.passes import ChannelCrop, NMSparsity

    def recipe():
        return [NMSparsity(method="wanda"), ChannelCrop(ratio=0.25, importance="activation", round_to=1)]

    rng = np.random.default_rng(1)
    other = [{"x": (rng.standard_normal((4, 16)) * rng.uniform(0.1, 3, 16)).astype(np.float32)} for _ in range(3)]
    model, reused = _mlp_model(), recipe()
    first = sparc.compile(model, calibration=list(_data()), recipe=reused, latency_rounds=0)
    second = sparc.compile(model, calibration=other, recipe=reused, latency_rounds=0)
    fresh = sparc.compile(model, calibration=other, recipe=recipe(), latency_rounds=0)
    assert ir.to_onnx_text(first.model) != ir.to_onnx_text(second.model)  # the data matters
    assert ir.to_onnx_text(second.model) == ir.to_onnx_text(fresh.model)
    assert [e.details for e in second.report.passes] == [e.details for e in fresh.report.passes]
    assert first.report.passes[0].details is not second.report.passes[0].details


def test_recovery_passes_get_the_original_as_the_lossless_passes_left_it():
    """The reference a recovery pass pairs blocks with is taken after Canonicalize, so the
    compressed model and the reference have one form (an Identity the exporter wrote is gone
    from both)."""
    import numpy as np
    import onnx_ir as ir
    from tiny_models import unrolled_rnn

    import sparc
    from sparc.passes import Distill, NMSparsity

    model, _ = unrolled_rnn()
    first = next(n for n in model.graph if n.op_type == "Tanh")
    identity = ir.node("Identity", [first.outputs[0]], name="exporter_identity")
    first.outputs[0].replace_all_uses_with(identity.outputs[0])
    identity.replace_input_with(0, first.outputs[0])
    model.graph.insert_after(first, identity)
    distill = Distill(steps=1)
    batches = [{"x": np.random.default_rng(i).standard_normal((8, 16)).astype(np.float32)} for i in range(3)]
    sparc.compile(model, recipe=[NMSparsity(), distill], calibration=batches, latency_rounds=0)
    assert not any(node.op_type == "Identity" for node in distill.reference.graph)
