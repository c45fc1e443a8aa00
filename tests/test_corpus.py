"""The corpus of ONNX models written by others (``sparc.eval.corpus``): the CI subset of the
outcome matrix. Each small model (paddle2onnx with weights in Constant nodes and -1 input
sizes, tf2onnx, keras2onnx with three outputs and PRelu, a legacy torch export with If
subgraphs and a recurrent state) runs through a few recipes; no cell may be a DEFECT (a crash,
a wrapped internal error, output the checker or ONNX Runtime rejects, a silent no-op).
The whole matrix: ``python benchmarks/corpus.py`` (about three hours)."""

from __future__ import annotations

import pytest

from sparc.eval import corpus
from sparc.runtime import OrtRunner

SMALL = [e.name for e in corpus.ENTRIES if e.small]
CI_RECIPES = ["clean-up", "ChannelCrop 0.3", "2:4 Wanda + FuseSparseOps", "unstructured 0.5 OWL + FuseSparseOps",
              "TokenRouter 0.8"]


@pytest.fixture(scope="module", params=SMALL)
def model(request):
    entry = corpus.by_name(request.param)
    path = corpus.fetch(entry)
    calibration, evaluation = entry.data()
    dense = OrtRunner(str(path), threads=1)
    return entry, path, calibration, evaluation, [dense.run(f) for f in evaluation]


@pytest.mark.parametrize("recipe", CI_RECIPES)
def test_no_defect_on_a_small_corpus_model(model, recipe):
    entry, path, calibration, evaluation, reference = model
    cell = corpus.outcome(entry, path, corpus.RECIPES[recipe], calibration, evaluation, reference, latency_rounds=1)
    assert cell["outcome"] in ("ok", "no-op", "refused"), cell
    if cell["outcome"] != "ok":
        assert cell["reason"], cell
    if recipe == "clean-up":  # lossless: the task measure is the original's
        assert cell["outcome"] == "ok"
        quality = cell.get("quality") or {}
        for name in ("agreement", "argmax agreement", "lines decoded alike"):
            assert quality.get(name, 1.0) == 1.0
        assert quality.get("accuracy") == quality.get("dense accuracy")


def test_the_corpus_spans_exporters_opsets_and_weight_forms():
    exporters = " ".join(e.exporter for e in corpus.ENTRIES)
    for needed in ("torch legacy", "tf2onnx", "keras2onnx", "paddle2onnx", "int8", "Constant nodes", "If subgraphs",
                   "opset 7", "opset 9", "opset 17"):
        assert needed in exporters, needed
    assert len(corpus.ENTRIES) >= 12
    assert sum(e.quality is not None for e in corpus.ENTRIES) >= 10


def test_an_unknown_corpus_model_is_a_clean_error():
    from sparc.errors import SparcError

    with pytest.raises(SparcError, match="no corpus model 'nope'"):
        corpus.by_name("nope")


def test_a_model_that_grows_is_a_defect():
    grown = corpus.flag_growth({"outcome": "ok", "params": 14.263})
    assert grown["outcome"] == "DEFECT" and "grew to 14.263×" in grown["reason"]
    assert corpus.flag_growth({"outcome": "ok", "params": 0.9})["outcome"] == "ok"


def test_smaller_or_faster_needs_fewer_parameters_or_macs_or_a_real_speedup():
    assert corpus.smaller_or_faster({"outcome": "ok", "params": 0.65, "macs": 1.0, "speedup": 0.97})
    assert corpus.smaller_or_faster({"outcome": "ok", "params": 1.0, "macs": 0.8, "speedup": None})
    assert corpus.smaller_or_faster({"outcome": "ok", "params": 1.0, "macs": 1.0, "speedup": 1.05})
    assert not corpus.smaller_or_faster({"outcome": "ok", "params": 1.0, "macs": 1.0, "speedup": 1.02})
    assert not corpus.smaller_or_faster({"outcome": "no-op", "params": 0.5})


def test_a_recipe_whose_first_pass_does_nothing_is_a_no_op_with_that_pass_reason():
    import numpy as np
    from tiny_models import unrolled_rnn

    from sparc import compile

    model, _ = unrolled_rnn()
    recipe = [{"NMSparsity": {"targets": ["nothing*"]}}, {"FuseSparseOps": {}}]
    compiled = compile(model, recipe=recipe, example_inputs={"x": np.ones((2, 16), np.float32)}, latency_rounds=0)
    cell = corpus._judge(compiled, recipe)
    assert cell["outcome"] == "no-op" and cell["reason"].startswith("NMSparsity: no linear layer")
