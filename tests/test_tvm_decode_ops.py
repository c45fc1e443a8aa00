"""TVM backend pieces of a decode step: grouped-query attention over the cache in place, one-row
norms scheduled with their reduction computed once."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, te, tirx
from tvm.s_tir import dlight

from sparc.backends.tvm import attention, lower, make_target, schedules

TARGET = make_target("cpu", 1)


def _grouped_attention_module(rows: int, heads: int = 6, kv_heads: int = 2, length: int = 40, depth: int = 32):
    """softmax(q · repeat(K)ᵀ) · repeat(V) as exporters write GQA: each cache head repeated by
    expand_dims → broadcast_to → reshape."""
    builder = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((1, heads, rows, depth), "float32"))
    k = relax.Var("k", relax.TensorType((1, kv_heads, length, depth), "float32"))
    v = relax.Var("v", relax.TensorType((1, kv_heads, length, depth), "float32"))
    with builder.function("main", [q, k, v]):
        with builder.dataflow():
            def repeat(cache):
                expanded = builder.emit(relax.op.expand_dims(cache, [2]))
                copies = builder.emit(relax.op.broadcast_to(expanded, (1, kv_heads, heads // kv_heads, length, depth)))
                return builder.emit(relax.op.reshape(copies, (1, heads, length, depth)))

            scores = builder.emit(relax.op.matmul(q, relax.op.permute_dims(repeat(k), [0, 1, 3, 2])))
            probs = builder.emit(relax.op.nn.softmax(scores))
            out = builder.emit_output(builder.emit(relax.op.matmul(probs, repeat(v))))
        builder.emit_func_output(out)
    return builder.get()


def _with_grouped_kernels(mod):
    builder = relax.BlockBuilder(mod)
    main = lower._replace_grouped_attention(mod["main"], builder)
    mod = builder.get()
    mod.update_func(mod.get_global_var("main"), main)
    return relax.transform.Normalize()(mod)


def _kernel_calls(mod) -> int:
    return sum(name.startswith("sparc_attention") for name in (gv.name_hint for gv in mod.functions))


@pytest.mark.parametrize("rows", [1, 3])
def test_grouped_attention_reads_the_cache_in_place_and_matches_numpy(rows):
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in [(1, 6, rows, 32), (1, 2, 40, 32), (1, 2, 40, 32)])
    mod = _with_grouped_kernels(_grouped_attention_module(rows))
    assert _kernel_calls(mod) == 2
    assert "broadcast_to" not in mod["main"].script()
    with TARGET:
        executable = tvm.compile(mod, target=TARGET, relax_pipeline=lower._pipeline(TARGET, []))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](*map(tvm.runtime.tensor, (q, k, v))).numpy()
    kk, vv = np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1)
    s = q @ kk.transpose(0, 1, 3, 2)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(got, p / p.sum(-1, keepdims=True) @ vv, rtol=1e-5, atol=1e-5)


def test_grouped_attention_keeps_the_matmuls_beyond_decode_rows():
    mod = _with_grouped_kernels(_grouped_attention_module(attention.MAX_ROWS + 1))
    assert _kernel_calls(mod) == 0


def _one_row_rms_norm(length: int = 64) -> tirx.PrimFunc:
    """y = x / sqrt(mean(x²) + ε) for x [1, 1, length]: the reduction keeps unit axes the
    output's element-wise block does not have."""
    x = te.placeholder((1, 1, length), "float32", name="x")
    k = te.reduce_axis((0, length), name="k")
    total = te.compute((1, 1, 1), lambda a, b, c: te.sum(x[a, b, k] * x[a, b, k], axis=k), name="total")
    y = te.compute((1, 1, length), lambda a, b, c: x[a, b, c] / te.sqrt(total[a, b, 0] / length + 1e-5), name="y")
    return te.create_prim_func([x, y])


def _loop_work_of(func: tirx.PrimFunc, block_name: str) -> int:
    """The product of the extents of the loops around the block ``block_name``."""
    found = []

    def visit(stmt, extents):
        if isinstance(stmt, tirx.For):
            visit(stmt.body, extents * int(stmt.extent))
        elif isinstance(stmt, s_tir.SBlockRealize):
            if stmt.block.name_hint == block_name:
                found.append(extents)
            visit(stmt.block.body, extents)
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt:
                visit(s, extents)
        elif hasattr(stmt, "body"):
            visit(stmt.body, extents)

    visit(func.body, 1)
    return max(found)


@pytest.mark.parametrize("rules", [schedules.rules(), [schedules.RowReduction(), schedules.Unnested()]],
                         ids=["all rules", "reduction rules"])
def test_a_one_row_norm_computes_its_reduction_once(rules):
    mod = tvm.IRModule({"main": _one_row_rms_norm().with_attr("global_symbol", "main")})
    with TARGET:
        scheduled = dlight.ApplyDefaultSchedule(*rules)(mod)
    assert _loop_work_of(scheduled["main"], "total") == 64  # its own 64-step reduction, not 64 × 64
    library = tvm.compile(scheduled, target=TARGET)
    x = np.random.default_rng(1).normal(size=(1, 1, 64)).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros_like(x))
    library["main"](tvm.runtime.tensor(x), y)
    np.testing.assert_allclose(y.numpy(), x / np.sqrt((x**2).mean() + 1e-5), rtol=1e-5)


def test_dlights_own_reduction_rule_nests_the_one_row_norm():
    """Why RowReduction exists: dlight's rule would compute the reduction per output element."""
    mod = tvm.IRModule({"main": _one_row_rms_norm().with_attr("global_symbol", "main")})
    with TARGET:
        scheduled = dlight.ApplyDefaultSchedule(dlight.cpu.Reduction())(mod)
    assert _loop_work_of(scheduled["main"], "total") == 64 * 64
