"""ONNX Runtime sessions over the IR (sparc.runtime): threads, providers, files, errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparc.errors import BackendError
from sparc.runtime import OrtRunner, session_options

MODEL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 3] x) => (float[N, 3] y, int64[N] k) {
    y = Relu(x)
    k = ArgMax <axis = 1, keepdims = 0> (x)
}
"""


def _model() -> ir.Model:
    return ir.from_onnx_text(MODEL)


def test_runs_an_ir_model_and_names_every_output():
    runner = OrtRunner(_model(), threads=1)
    x = np.array([[1.0, -2.0, 3.0], [-1.0, 5.0, 0.0]], np.float32)
    out = runner.run({"x": x})
    assert runner.input_names == ["x"] and runner.output_names == ["y", "k"]
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
    np.testing.assert_array_equal(out["k"], [2, 1])


def test_runs_a_file_after_checking_its_tensors(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save(_model(), path)
    assert OrtRunner(path).run({"x": np.ones((1, 3), np.float32)})["k"].shape == (1,)


def test_thread_count_means_what_it_says():
    options = session_options(2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    with pytest.raises(BackendError, match="at least 1"):
        session_options(0)
    with pytest.raises(BackendError, match="unknown graph optimization level"):
        session_options(1, "max")


def test_unknown_providers_and_failed_runs_are_backend_errors():
    with pytest.raises(BackendError, match=r"execution providers \['NoSuchExecutionProvider'\]"):
        OrtRunner(_model(), providers=["NoSuchExecutionProvider"])
    with pytest.raises(BackendError, match="ONNX Runtime failed to run the model"):
        OrtRunner(_model()).run({"x": np.ones((1, 4), np.float32)})
