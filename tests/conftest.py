"""Shared fixtures: the real MiniLM model (captured once per session) and small ONNX files."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparc.capture import capture_torch
from sparc.eval import datasets, zoo


@pytest.fixture(scope="session")
def minilm():
    return zoo.minilm()


@pytest.fixture(scope="session")
def minilm_batches(minilm):
    """Four batches of 4 real news stories at 32 tokens."""
    return minilm.batches(datasets.lee_background()[:16], 4, seq=32)


@pytest.fixture(scope="session")
def minilm_ir(minilm, minilm_batches):
    return capture_torch(minilm.module, zoo.torch_inputs(minilm_batches[0]), minilm.dynamic_axes)


@pytest.fixture(scope="session")
def minilm_path(minilm_ir, tmp_path_factory):
    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    ir.save(minilm_ir, path)
    return path


@pytest.fixture(scope="session")
def minilm_npz(minilm_batches, tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, **{k: np.concatenate([b[k] for b in minilm_batches]) for k in minilm_batches[0]})
    return path
