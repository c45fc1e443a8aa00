"""The sparc command end to end: compile, inspect, bench, demo, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from sparc.cli import main


def run_cli(*args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_with_calibration_and_reports(minilm_path, minilm_npz, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, _ = run_cli(
        "compile", minilm_path, "-o", out, "--calib", minilm_npz, "--batch-size", "4",
        "--report", tmp_path / "r.md", "--json", tmp_path / "r.json", "--threads", "1",
        capsys=capsys,
    )
    assert code == 0
    onnx.checker.check_model(str(out))
    assert "| FoldConstants" in stdout and "latency" in stdout
    assert (tmp_path / "r.md").read_text().startswith("# sparc compile report")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["original"]["params"] == 22_565_381
    assert report["validation"] == "1 held-out calibration batch(es)"


def test_compile_with_a_recipe_file(minilm_path, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - RemoveUnused\n")
    code, stdout, _ = run_cli(
        "compile", minilm_path, "-o", tmp_path / "o.onnx", "--recipe", recipe, capsys=capsys
    )
    assert code == 0 and "| RemoveUnused" in stdout and "FoldConstants" not in stdout


def test_inspect(minilm_path, capsys):
    code, stdout, _ = run_cli("inspect", minilm_path, "--dim", "batch=1", "--dim", "seq=128", capsys=capsys)
    assert code == 0
    assert "parameters: 22,565,381" in stdout
    assert "| MatMul |" in stdout and "| LayerNormalization | 13 |" in stdout
    assert "attention.self.query | MatMul | [384, 384] | 1.000 |" in stdout
    code, stdout, _ = run_cli("inspect", minilm_path, "--json", capsys=capsys)
    data = json.loads(stdout)
    assert data["stats"]["macs"] > 0 and len(data["layers"]) == 36


def test_bench_two_onnx_files(minilm_path, capsys):
    code, stdout, _ = run_cli(
        "bench", minilm_path, "--vs", minilm_path, "--rounds", "2", "--seq", "16", "--json",
        capsys=capsys,
    )
    assert code == 0
    data = json.loads(stdout)
    assert data["threads"] == 1 and data["rounds"] == 2
    assert set(data["ratio_to_baseline"]) == {str(minilm_path), f"{minilm_path} (2)"}


def test_bench_onnx_against_torch_eager(capsys):
    code, stdout, _ = run_cli(
        "bench", "zoo:minilm", "--vs", "torch:minilm", "--rounds", "2", "--seq", "32", capsys=capsys
    )
    assert code == 0
    assert "| torch:minilm |" in stdout and "| zoo:minilm |" in stdout
    assert "input_ids[1, 32]" in stdout


@pytest.mark.long  # the whole demo (minutes): `make demo` is the quick start's first command
def test_demo(tmp_path, capsys):
    """The demo tries every candidate, keeps the fastest within the budget, and what it writes
    is true: the exported model reproduces the cosine and Lee r it reports."""
    import torch

    import sparc
    from sparc.eval import datasets, demo, quality, zoo
    from sparc.runtime import OrtRunner

    code, stdout, _ = run_cli("demo", "--out", tmp_path / "demo", capsys=capsys)
    assert code == 0
    for name in ("model.onnx", "report.md", "report.json", "tradeoff.png"):
        assert (tmp_path / "demo" / name).is_file()
    assert "| latency ms (1 thread, batch 1, seq 128) |" in stdout and "| Lee r (1,225 rated pairs) | 0.65" in stdout
    result = json.loads((tmp_path / "demo" / "report.json").read_text())
    trials = {t["name"]: t for t in result["trials"]}
    assert list(trials) == list(demo.CANDIDATES)
    chosen = trials[result["chosen"]]
    within = [t for t in trials.values() if t["meets_budget"]]
    if within:
        assert chosen["speedup"] == max(t["speedup"] for t in within)
    else:
        assert "No recipe stays within the budget" in result["verdict"]
    assert chosen["speedup"] == pytest.approx(1 / result["report"]["latency"]["ratio"])
    minilm = zoo.minilm()
    documents = datasets.lee_documents()
    exported = OrtRunner(sparc.load(tmp_path / "demo" / "model.onnx").model, threads=1)
    embeddings = quality.encoder(exported.run, minilm, demo.SEQ)(documents)
    assert quality.lee_correlation_of(embeddings) == pytest.approx(chosen["lee_r"], abs=1e-4)
    with torch.no_grad():
        original = quality.encoder(lambda f: minilm.module(**zoo.torch_inputs(f)).numpy(), minilm, demo.SEQ)(documents)
    cosines = np.sum(embeddings * original, axis=1) / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(original, axis=1)
    assert cosines.mean() == pytest.approx(chosen["cosine"], abs=1e-4)
    assert chosen["params"] == result["report"]["final"]["params"]


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: d / "missing.onnx", "no such file"),
        (lambda d: _write(d / "text.onnx", b"hello, I am not a model\n" * 50), "not"),
        (lambda d: _write(d / "empty.onnx", b""), "not an ONNX model"),
    ],
)
def test_bad_models_give_one_line_and_write_nothing(tmp_path, capsys, make_input, message):
    source = make_input(tmp_path)
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_cli("compile", source, "-o", out, capsys=capsys)
    assert code == 1
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_truncated_model_leaves_existing_output_untouched(minilm_path, tmp_path, capsys):
    truncated = _write(tmp_path / "t.onnx", minilm_path.read_bytes()[:100_000])
    out = _write(tmp_path / "out.onnx", b"previous output")
    code, _, stderr = run_cli("compile", truncated, "-o", out, capsys=capsys)
    assert code == 1 and str(truncated) in stderr
    assert out.read_bytes() == b"previous output"


def test_recipe_typo_and_bad_calibration(minilm_path, tmp_path, capsys):
    out = _write(tmp_path / "out.onnx", b"previous output")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - FoldConstans\n")
    code, _, stderr = run_cli("compile", minilm_path, "-o", out, "--recipe", recipe, capsys=capsys)
    assert code == 1 and "unknown pass 'FoldConstans'" in stderr
    calib = tmp_path / "c.npz"
    np.savez(calib, input_ids=np.ones((2, 8), np.int64), mask=np.ones((2, 8), np.int64))
    code, _, stderr = run_cli("compile", minilm_path, "-o", out, "--calib", calib, capsys=capsys)
    assert code == 1 and "missing inputs ['attention_mask']" in stderr and "unknown inputs ['mask']" in stderr
    calib_float = tmp_path / "f.npz"
    np.savez(calib_float, input_ids=np.ones((2, 8)), attention_mask=np.ones((2, 8), np.int64))
    code, _, stderr = run_cli("compile", minilm_path, "-o", out, "--calib", calib_float, capsys=capsys)
    assert code == 1 and "input 'input_ids' has dtype float64, the model wants int64" in stderr
    assert out.read_bytes() == b"previous output"


def test_console_script_error_and_verbose(tmp_path):
    sparc_bin = os.path.join(os.path.dirname(sys.executable), "sparc")
    result = subprocess.run([sparc_bin, "inspect", str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().endswith("no such file")
    assert len(result.stderr.strip().splitlines()) == 1
    verbose = subprocess.run(
        [sparc_bin, "--verbose", "inspect", str(tmp_path / "x.onnx")], capture_output=True, text=True
    )
    assert "Traceback" in verbose.stderr


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
