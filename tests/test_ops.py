"""The ai.sparc domain (sparc.ops): compressed formats, SparseLinear's semantics and lowering."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from tiny_models import MLP, seeded

import sparc
from sparc.capture import capture
from sparc.measure.cost import MAC_RULES, count_macs
from sparc.ops import DOMAIN, formats, lower_to_standard, sparse_linear
from sparc.passes import FuseSparseOps, NMSparsity
from sparc.runtime import LOWERINGS, OrtRunner


def test_compressed_indices_use_the_narrowest_type():
    weight = np.eye(8, 70_000, dtype=np.float32)
    assert formats.compress_csr(weight)["indices"].dtype == np.int32
    assert formats.compress_csr(weight[:, :300])["indices"].dtype == np.uint16
    assert formats.compress_bsr(weight[:, :300], (4, 1))["indptr"].dtype == np.uint16


@pytest.mark.parametrize("shape", [(16, 32), (20, 30)])
def test_formats_round_trip(shape):
    rng = np.random.default_rng(2)
    weight = rng.normal(size=shape).astype(np.float32)
    nm = np.where(np.argsort(rng.random(weight.shape).reshape(shape[0], -1, 2), axis=2) < 1, 1, 0).reshape(shape)
    for fmt, sparse, extra in [
        ("csr", weight * (rng.random(shape) < 0.2), {}),
        ("bsr", weight * np.repeat(rng.random((shape[0] // 4 + 1, shape[1])) < 0.3, 4, axis=0)[: shape[0]],
         {"blocksize": (4, 1)}),
        ("nm", weight * nm, {"n": 1, "m": 2}),
    ]:
        tensors = sparse_linear.compress(sparse, fmt, **extra)
        np.testing.assert_array_equal(sparse_linear.dense_weight(fmt, shape, tensors, **extra), sparse)
    with pytest.raises(sparc.SparcError, match="not 1:4"):
        formats.compress_nm(weight, 1, 4)


def test_sessions_run_sparse_linear_through_the_lowering_sparc_ops_registered():
    """The runtime knows no ai.sparc op itself: sparc.ops registers its lowering (and its MAC rule)."""
    assert LOWERINGS[DOMAIN] is lower_to_standard and (DOMAIN, sparse_linear.OP) in MAC_RULES
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    model = capture(seeded(MLP), example_inputs=(torch.from_numpy(x),))
    NMSparsity(n=2, m=4, include_outputs=True)(model)
    dense = OrtRunner(model).run({"x": x})
    FuseSparseOps()(model)
    assert {n.domain for n in model.graph} == {DOMAIN}
    fused = OrtRunner(model).run({"x": x})
    for name, value in dense.items():
        np.testing.assert_allclose(fused[name], value, rtol=1e-5, atol=1e-6)
    macs, unknown = count_macs(model, {"x": x})
    assert not unknown and macs == 4 * (16 * 32 + 32 * 8) // 2
    with pytest.raises(sparc.BackendError):
        OrtRunner(ir.Model(ir.Graph([], [], nodes=[ir.node("Nope", [], domain="ai.unknown")],
                                    opset_imports={"": 18, "ai.unknown": 1}), ir_version=10))
