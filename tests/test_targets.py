"""Targets wasm (onnxruntime-web in Node.js) and aarch64 (ONNX Runtime under qemu)."""

from __future__ import annotations

import numpy as np
import pytest

import sparc
from sparc.backends import arm, targets
from sparc.cli import main
from sparc.errors import BackendError, CalibrationError
from sparc.passes import FuseSparseOps, NMSparsity, TokenRouter

TIGHT = 1e-4  # float32 kernels of another build: summation order only


def test_wasm_target_checks_outputs_and_times_the_export_beside_the_original(minilm_ir, minilm_batches):
    """N:M weights fused into ai.sparc ops are lowered to standard ONNX for onnxruntime-web."""
    compiled = sparc.compile(minilm_ir, calibration=minilm_batches, target="wasm", latency_rounds=3,
                             recipe=[NMSparsity(n=2, m=4), FuseSparseOps()])
    check = compiled.report.target_check
    assert check.target == "wasm" and "onnxruntime-web" in check.runtime
    assert check.max_rel_diff < TIGHT
    assert check.latency.rounds == 3 and check.latency.original_ms > 0 and check.latency.compiled_ms > 0
    assert "WebAssembly latency" in compiled.report.to_markdown()


def test_arm_target_checks_outputs_and_reports_no_latency(minilm_ir, minilm_batches):
    compiled = sparc.compile(minilm_ir, calibration=minilm_batches, target="aarch64", latency_rounds=0,
                             recipe=[TokenRouter(keep=0.5, start_block=2, router="norm")])
    check = compiled.report.target_check
    assert "aarch64" in check.runtime and "qemu" in check.runtime
    assert check.max_rel_diff < TIGHT and check.latency is None
    assert "emulated, so not timed" in compiled.report.to_markdown()


def test_verify_command_on_an_onnx_file(minilm_path, minilm_npz, capsys):
    assert main(["verify", str(minilm_path), "--target", "wasm", "--inputs", str(minilm_npz), "--batch", "2",
                 "--vs", str(minilm_path), "--rounds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wasm check" in printed and "input_ids[2, 32]" in printed and "ratio" in printed


def test_a_target_check_needs_data(minilm_ir):
    with pytest.raises(CalibrationError, match="target 'wasm'"):
        sparc.compile(minilm_ir, target="wasm", validate=False)


def test_unknown_targets_are_refused(minilm_ir):
    with pytest.raises(BackendError, match="no target 'riscv'"):
        sparc.compile(minilm_ir, target="riscv")
    with pytest.raises(BackendError, match="nothing to verify"):
        targets.verify("model.onnx", "cpu", {})


def test_outputs_that_differ_are_an_error():
    expected = {"y": np.ones((2, 3), np.float32)}
    with pytest.raises(BackendError, match="shape"):
        targets._differences({"y": np.ones((3, 2), np.float32)}, expected, "m.onnx", "wasm")
    with pytest.raises(BackendError, match=r"\['y'\] are missing"):
        targets._differences({}, expected, "m.onnx", "wasm")
    scaled = targets._differences({"y": expected["y"] * 1.5}, expected, "m.onnx", "wasm")
    assert (scaled.max_abs, scaled.max_rel) == (0.5, 0.5)


def test_each_output_is_compared_on_its_own_scale_and_integers_exactly():
    """A large integer output must not hide a small float output's error, nor vice versa."""
    expected = {"ids": np.array([[101, 20000, 102]]), "embedding": np.full((1, 4), 0.5, np.float32)}
    got = {"ids": expected["ids"].copy(), "embedding": expected["embedding"] + 0.01}
    agreement = targets._differences(got, expected, "m.onnx", "wasm")
    assert agreement.max_rel == pytest.approx(0.02) and agreement.exceeding(1e-3)[0].name == "embedding"
    got = {"ids": expected["ids"] + [[0, 1, 0]], "embedding": expected["embedding"]}
    assert [o.name for o in targets._differences(got, expected, "m.onnx", "wasm").exceeding(1e-3)] == ["ids"]


def test_arm_without_a_rootfs_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARC_CACHE", str(tmp_path))
    with pytest.raises(BackendError, match="python -m sparc.backends.arm"):
        arm.run({"m": tmp_path / "m.onnx"}, {})


def test_wasm_reads_a_model_whose_weights_are_external(minilm_ir, minilm_batches, tmp_path):
    import onnx_ir as ir

    path = tmp_path / "minilm.onnx"
    ir.save(minilm_ir, path, external_data="minilm.onnx.data")
    check = targets.verify(path, "wasm", minilm_batches[0])
    assert check.max_rel_diff < TIGHT
