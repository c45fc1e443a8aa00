"""The public API: compile, run, export, load."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from tiny_models import MLP, seeded

import sparc
from sparc.errors import BackendError, CalibrationError


@pytest.fixture(scope="module")
def compiled_mlp():
    module = seeded(MLP)
    calib = [{"x": np.random.default_rng(i).standard_normal((4, 16)).astype(np.float32)} for i in range(5)]
    compiled = sparc.compile(
        module, example_inputs=(torch.randn(2, 16),), dynamic_axes={"x": [0]},
        calibration=calib, threads=1, latency_rounds=3,
    )
    return module, compiled


def test_call_accepts_numpy_torch_and_dicts(compiled_mlp):
    module, compiled = compiled_mlp
    x = torch.randn(3, 16)
    want = module(x).detach().numpy()
    for got in (compiled(x.numpy()), compiled(x), compiled({"x": x}), compiled(x=x.numpy())):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert compiled.run({"x": x.numpy()})[compiled.output_names[0]].shape == (3, 8)


def test_report_has_every_figure(compiled_mlp):
    _, compiled = compiled_mlp
    report = compiled.report
    assert report.validation == "1 held-out calibration batch(es)"
    assert report.original.params == report.final.params == 16 * 32 + 32 + 32 * 8 + 8
    assert report.original.macs == 4 * (16 * 32 + 32 * 8)
    assert report.latency.original_ms > 0 and report.latency.ratio > 0
    text = report.to_markdown()
    assert "| FoldConstants" in text and "latency" in text
    data = report.to_dict()
    assert data["final"]["params"] == report.final.params
    assert data["passes"][0]["name"] == "FoldConstants"


def test_export_and_load_round_trip(compiled_mlp, tmp_path):
    module, compiled = compiled_mlp
    path = compiled.export(tmp_path / "mlp.onnx")
    onnx.checker.check_model(str(path))
    loaded = sparc.load(path)
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(loaded(x), compiled(x), rtol=1e-6)
    assert loaded.report is None and loaded.original is None


def test_wrong_inputs_to_a_compiled_model(compiled_mlp):
    _, compiled = compiled_mlp
    with pytest.raises(CalibrationError, match="has shape"):
        compiled(np.ones((2, 3), np.float32))
    with pytest.raises(CalibrationError, match="takes 1 inputs"):
        compiled(np.ones((2, 16)), np.ones((2, 16)))


def test_unknown_backend_target_and_format(compiled_mlp, tmp_path):
    _, compiled = compiled_mlp
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'"):
        sparc.compile(compiled.model, backend="tensorrt")
    with pytest.raises(BackendError, match="has no target 'gpu'"):
        sparc.compile(compiled.model, target="gpu")
    with pytest.raises(BackendError, match="unknown export format"):
        compiled.export(tmp_path / "x.onnx", format="tflite")


def test_compile_without_any_data_still_works(compiled_mlp):
    _, compiled = compiled_mlp
    again = sparc.compile(compiled.model)
    assert again.report.validation == "none (no data given)"
    assert again.report.passes[-1].error is None


def test_backend_options(compiled_mlp):
    _, compiled = compiled_mlp
    again = sparc.compile(
        compiled.model, backend_options={"optimization": "disable", "providers": ["CPUExecutionProvider"]}
    )
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(again(x), compiled(x), rtol=1e-6)
    with pytest.raises(BackendError, match=r"no option\(s\) \['thread'\]"):
        sparc.compile(compiled.model, backend_options={"thread": 2})
    with pytest.raises(BackendError, match="unknown graph optimization level"):
        sparc.compile(compiled.model, backend_options={"optimization": "max"})


def test_onnx_only_use_never_imports_torch(minilm_path, tmp_path):
    """A user without torch compiles, runs and exports ONNX models."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np, sparc
c = sparc.compile({str(minilm_path)!r}, example_inputs=(np.ones((1, 8), np.int64), np.ones((1, 8), np.int64)))
c.export({str(tmp_path / "m.onnx")!r})
print(c(np.ones((1, 8), np.int64), np.ones((1, 8), np.int64)).shape)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 384)"
