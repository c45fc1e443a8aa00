"""sparc with only its core dependencies (no torch, no model packages, no TVM) in a fresh venv:
``sparc inspect`` and ``sparc compile --recipe --calib`` on a real ONNX file."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tomllib

from sparc.files import cache_dir

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """\
passes:
  - ChannelCrop: {ratio: 0.25, importance: activation}
  - NMSparsity: {n: 2, m: 4, method: wanda}
"""


def _run(command: list, **options) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=900, **options)


@pytest.fixture(scope="session")
def core_venv(tmp_path_factory) -> Path:
    """A venv with sparc's core dependencies, built once per pyproject (cached), with this
    checkout's sparc installed into it (not editable, built from a copy: pip's build folder
    stays out of the checkout) on every run."""
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    dependencies = tomllib.loads(pyproject.decode())["project"]["dependencies"]
    folder = cache_dir() / f"core-venv-{hashlib.sha256(pyproject).hexdigest()[:12]}"
    python = folder / "bin" / "python"
    if not (folder / ".complete").is_file():
        assert _run([sys.executable, "-m", "venv", "--clear", folder]).returncode == 0
        done = _run([python, "-m", "pip", "install", "--quiet", *dependencies])
        assert done.returncode == 0, done.stderr[-2000:]
        (folder / ".complete").write_text("\n".join(dependencies))
    source = tmp_path_factory.mktemp("sparc-source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "sparc", source / "sparc", ignore=shutil.ignore_patterns("__pycache__"))
    done = _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", source])
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def test_the_core_install_has_none_of_the_optional_packages(core_venv):
    for name in ("torch", "tvm", "transformers", "sentence_transformers", "matplotlib", "ray"):
        done = _run([core_venv / "bin" / "python", "-c", f"import {name}"])
        assert done.returncode != 0, f"{name} is importable in the core venv"


def test_inspect_and_compile_an_onnx_file_with_core_dependencies_only(core_venv, minilm_path, minilm_npz, tmp_path):
    sparc = core_venv / "bin" / "sparc"
    inspected = _run([sparc, "inspect", minilm_path, "--dim", "batch=1", "--dim", "seq=128"], cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert "parameters: 22,565,381" in inspected.stdout
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    out = tmp_path / "out.onnx"
    compiled = _run([sparc, "compile", minilm_path, "-o", out, "--recipe", tmp_path / "recipe.yaml",
                     "--calib", minilm_npz, "--batch-size", "4", "--threads", "1"], cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    assert "| ChannelCrop" in compiled.stdout and "| NMSparsity" in compiled.stdout
    assert "cos " in compiled.stdout  # the embedding's fidelity
    onnx.checker.check_model(str(out))
    assert out.stat().st_size < minilm_path.stat().st_size


def _mlp_file(path: Path) -> Path:
    """x[batch, 32] → MatMul 32×128 → Relu → MatMul 128×8, made with onnx.helper (no torch)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) / 8, n)
               for n, s in (("w1", (32, 128)), ("w2", (128, 8)))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="down")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_tune_runs_with_core_dependencies_only(core_venv, tmp_path):
    model = _mlp_file(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((96, 32)).astype(np.float32))
    out = tmp_path / "tuned.onnx"
    tuned = _run([core_venv / "bin" / "sparc", "tune", model, "--calib", tmp_path / "calib.npz", "--batch-size", "16",
                  "--max-loss", "0.05", "--trials", "2", "--time-budget", "5m", "-o", out,
                  "--recipe-out", tmp_path / "recipe.yaml"], cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr
    assert "# sparc tune" in tuned.stdout and "## Candidates measured" in tuned.stdout
    onnx.checker.check_model(str(out))
    plotted = _run([core_venv / "bin" / "sparc", "tune", model, "--calib", tmp_path / "calib.npz", "--max-loss", "0.05",
                    "--trials", "1", "-o", out, "--plot", tmp_path / "front.png"], cwd=tmp_path)
    assert plotted.returncode == 1 and "needs matplotlib" in plotted.stderr


def test_compiling_on_ray_without_it_says_which_extra_to_install(core_venv, tmp_path):
    """The core install runs in process; --ray needs sparc[distributed] and says so."""
    model = _mlp_file(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    done = _run([core_venv / "bin" / "sparc", "compile", model, "-o", tmp_path / "out.onnx", "--calib",
                 tmp_path / "calib.npz", "--recipe", tmp_path / "recipe.yaml", "--ray", "local"], cwd=tmp_path)
    assert done.returncode == 1 and "pip install 'sparc[distributed]'" in done.stderr, done.stderr
