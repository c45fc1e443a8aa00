"""The TVM backend: kernels against the SparseLinear numpy reference, layout choice, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tiny_models import MLP, seeded

import sparc
from sparc import compiler
from sparc.backends.tvm import TvmRunner, choose, kernels, load_library, make_target, set_threads
from sparc.backends.tvm.kernels import Layout
from sparc.capture import capture_torch, load_onnx
from sparc.eval import zoo
from sparc.ops.sparse_linear import reference
from sparc.passes import BlockSparsity
from sparc.runtime import OrtRunner

TARGET = make_target("cpu", 1)


def _run_kernel(x, weight_nk, bias, layout, activation):
    tensors = kernels.pack(weight_nk, layout)
    rows, k_in = x.shape
    func = kernels.linear_kernel(rows, k_in, weight_nk.shape[0], layout, tensors, activation)
    library = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    out_cols = tensors[0].shape[0] * kernels.PANEL if layout.format == "dense" else weight_nk.shape[0]
    padded_bias = np.zeros(out_cols, np.float32)
    padded_bias[: len(bias)] = bias
    y = tvm.runtime.tensor(np.zeros((rows, out_cols), np.float32))
    library["main"](tvm.runtime.tensor(x), *map(tvm.runtime.tensor, tensors), tvm.runtime.tensor(padded_bias), y)
    return y.numpy()[:, : weight_nk.shape[0]]


def _sparse_weight(rng, layout, n_out, k_in):
    weight = rng.normal(size=(n_out, k_in)).astype(np.float32)
    if layout.format == "bsr":
        br, bc = layout.block
        keep = rng.random((n_out // br, -(-k_in // bc))) < 0.4
        keep[0] = False  # an empty block row
        weight *= np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)[:, :k_in]
    if layout.format in ("csr", "bitmap"):
        weight *= rng.random(weight.shape) < 0.4
        weight[5] = 0  # an output with no stored value
    if layout.format == "nm":
        groups = -(-k_in // layout.m)
        keep = np.argsort(rng.random((n_out, groups, layout.m)), axis=2) < layout.n
        weight *= keep.reshape(n_out, -1)[:, :k_in]
    return weight


LAYOUTS = [Layout("dense"), Layout("bsr", (16, 1)), Layout("bsr", (8, 1)), Layout("bsr", (4, 1)),
           Layout("bsr", (1, 1)), Layout("bsr", (4, 4)), Layout("bsr", (16, 1), order="rows"),
           Layout("bsr", (4, 4), order="rows"), Layout("bsr", (16, 1), order="rows", tile=16), Layout("csr"),
           Layout("nm", n=2, m=4), Layout("nm", n=4, m=8), Layout("nm", n=2, m=4, order="lanes"),
           Layout("nm", n=4, m=8, order="lanes"), Layout("bitmap")]
ACTIVATIONS = ("gelu", "silu", "relu", "gelu_tanh", "tanh", "sigmoid", "none")


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.describe())
@pytest.mark.parametrize("rows,k_in", [(1, 48), (7, 30), (70, 200)])  # M = 1; row tails; K not a multiple
# of bc/m; several row tiles and input slices
def test_kernels_match_the_sparse_linear_reference(layout, rows, k_in):
    rng = np.random.default_rng(rows)
    n_out = 48 if layout.format != "dense" else 40  # the dense panel pads 40 to 48 rows
    weight = _sparse_weight(rng, layout, n_out, k_in)
    x = rng.normal(size=(rows, k_in)).astype(np.float32)
    bias = rng.normal(size=n_out).astype(np.float32)
    activation = ACTIVATIONS[len(layout.describe()) % 7]
    np.testing.assert_allclose(_run_kernel(x, weight, bias, layout, activation),
                               reference(x, weight, bias, activation), rtol=1e-4, atol=1e-5)


AVX512 = pytest.mark.skipif(not choose.has_avx512(TARGET), reason="the bitmap kernel needs AVX-512")


@AVX512
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("rows", [1, 3, 8])  # four accumulator sets; one tile of 3 rows; one full tile
def test_bitmap_kernel_matches_the_reference_at_decode_rows(rows, activation):
    rng = np.random.default_rng(rows)
    weight = rng.normal(size=(32, 37)).astype(np.float32) * (rng.random((32, 37)) < 0.5)  # K = 37: no multiple of 4
    weight[3] = 0  # an output with no stored value
    x = rng.normal(size=(rows, 37)).astype(np.float32)
    bias = rng.normal(size=32).astype(np.float32)
    np.testing.assert_allclose(_run_kernel(x, weight, bias, Layout("bitmap"), activation),
                               reference(x, weight, bias, activation), rtol=1e-4, atol=1e-5)


@AVX512
@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_bitmap_kernel_with_an_empty_and_a_full_weight(fill):
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(16, 50)).astype(np.float32) * fill
    x = rng.normal(size=(3, 50)).astype(np.float32)
    bias = rng.normal(size=16).astype(np.float32)
    masks, values, starts = kernels.pack(weight, Layout("bitmap"))
    assert len(values) == 16 * 50 * fill + kernels.PREFETCH + 16 and starts.tolist() == [0]
    assert np.all(masks == (0xFFFF if fill else 0))
    np.testing.assert_allclose(_run_kernel(x, weight, bias, Layout("bitmap"), "none"), x @ weight.T + bias,
                               rtol=1e-4, atol=1e-5)


def test_bitmap_is_a_candidate_for_decode_rows_on_avx512():
    weight = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    half = weight * (np.abs(weight) > np.median(np.abs(weight)))
    assert Layout("bitmap") in choose.candidates(half, rows=8, lanes=True)
    assert Layout("bitmap") not in choose.candidates(half, rows=9, lanes=True)  # prefill: not offered
    assert Layout("bitmap") not in choose.candidates(half, rows=1, lanes=False)  # needs AVX-512
    assert Layout("bitmap") not in choose.candidates(weight, rows=1, lanes=True)  # dense weight
    assert Layout("bitmap") not in choose.candidates(half[:40], rows=1, lanes=True)  # N not a multiple of 16


@AVX512
def test_decode_rows_are_timed_with_the_weights_streamed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARC_CACHE", str(tmp_path))
    flushed = []
    real = choose._timer
    monkeypatch.setattr(choose, "_timer", lambda library, device, rows: flushed.append(rows <= choose.STREAMED_ROWS)
                        or real(library, device, rows))
    weight = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    weight *= np.random.default_rng(1).random(weight.shape) < 0.5
    picked = choose.choose_layout(weight, 2, "silu", TARGET, threads=1)
    assert set(picked.timings_ms) == {"dense", "bitmap 16-row panels"} and flushed == [True, True]
    assert picked.layout == min(choose.candidates(weight, 2, lanes=True), key=lambda c: picked.timings_ms[c.describe()])


def test_an_all_zero_weight_gives_the_bias():
    x = np.ones((3, 16), np.float32)
    bias = np.arange(16, dtype=np.float32)
    out = _run_kernel(x, np.zeros((16, 16), np.float32), bias, Layout("bsr", (16, 1)), "none")
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (3, 16)))


@pytest.mark.parametrize("rows,length", [(1, 7), (24, 128)])
def test_softmax_kernel_matches_numpy(rows, length):
    x = (np.random.default_rng(1).normal(size=(rows, length)) * 30).astype(np.float32)
    x[0, 0] = -1e30  # a masked position
    func = kernels.softmax_kernel(rows, length)
    library = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    y = tvm.runtime.tensor(np.zeros_like(x))
    library["main"](tvm.runtime.tensor(x), y)
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y.numpy(), e / e.sum(axis=1, keepdims=True), rtol=2e-6, atol=1e-7)


def test_polynomial_exp_and_erf_are_float32_accurate():
    from math import erf

    from tvm.script import tirx as T

    values = np.linspace(-30, 30, 4001, dtype=np.float32)

    @T.prim_func
    def both(x: T.Buffer((4001,), "float32"), e: T.Buffer((4001,), "float32"), f: T.Buffer((4001,), "float32")):
        for i in T.vectorized(4001):
            e[i] = kernels.fast_exp(x[i])
            f[i] = kernels.fast_erf(x[i])

    library = tvm.compile(tvm.IRModule({"main": both.with_attr("global_symbol", "main")}), target=TARGET)
    outs = [tvm.runtime.tensor(np.zeros(4001, np.float32)) for _ in range(2)]
    library["main"](tvm.runtime.tensor(values), *outs)
    np.testing.assert_allclose(outs[0].numpy(), np.exp(values.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(outs[1].numpy(), [erf(v) for v in values.astype(np.float64)], atol=5e-7)


def test_layout_choice_keeps_the_fastest(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARC_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    two_four = _sparse_weight(rng, Layout("nm", n=2, m=4), 256, 256)  # half dense, no block structure
    picked = choose.choose_layout(two_four, 64, "none", TARGET, threads=1)
    lanes = {"2:4, lane permute"} if choose.has_avx512(TARGET) else set()
    assert set(picked.timings_ms) == {"dense", "2:4"} | lanes
    assert picked.layout == min(choose.candidates(two_four, 64, lanes=bool(lanes)),
                                key=lambda c: picked.timings_ms[c.describe()])
    assert picked.timings_ms["2:4"] > picked.timings_ms["dense"]  # the scalar N:M kernel loses to dense
    blocky = _sparse_weight(rng, Layout("bsr", (16, 1)), 256, 256)  # 40% of 16x1 blocks
    picked = choose.choose_layout(blocky, 64, "none", TARGET, threads=1)
    assert picked.layout == min(choose.candidates(blocky, 64), key=lambda c: picked.timings_ms[c.describe()])
    assert "bsr 16x1, rows outer" in picked.timings_ms  # 64 rows: both loop orders timed
    assert (tmp_path / "tvm-layouts.json").exists()


@pytest.fixture(scope="module")
def mlp_model():
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    return capture_torch(seeded(MLP), (torch.from_numpy(x),), {"x": {0: "batch"}}), x


def test_minilm_through_tvm_matches_onnx_runtime(minilm_ir, minilm_batches):
    feeds = {k: v[:2, :32] for k, v in minilm_batches[0].items()}
    compiled = sparc.compile(minilm_ir, calibration=[feeds, feeds], backend="tvm",
                             recipe=[BlockSparsity(block=(16, 1), density=0.3)], threads=1, latency_rounds=0)
    build = compiled.report.tvm
    assert build.agreement.max_rel < 1e-3 and len(build.layouts) == 36
    assert "TVM vs ONNX Runtime outputs" in compiled.report.to_markdown()
    ours = compiled.run(feeds)
    theirs = sparc.runtime.OrtRunner(compiled.model).run(feeds)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-4, atol=1e-5)


def test_dynamic_batch_compiles_per_shape(mlp_model):
    model, x = mlp_model
    compiled = sparc.compile(model, example_inputs=(x,), backend="tvm", latency_rounds=0)
    for batch in (1, 3):
        feeds = {"x": x[:batch]}
        np.testing.assert_allclose(compiled.run(feeds)[compiled.output_names[0]],
                                   sparc.runtime.OrtRunner(model).run(feeds)[compiled.output_names[0]],
                                   rtol=1e-5, atol=1e-6)
    assert len(compiled._runner.compiled) == 3  # the example shape and the two new ones


def test_slower_tvm_falls_back_to_onnx_runtime(mlp_model, monkeypatch):
    model, x = mlp_model
    monkeypatch.setattr(compiler, "FALLBACK_RATIO", -1.0)  # any measured ratio counts as slower
    compiled = sparc.compile(model, example_inputs=(x,), backend="tvm", latency_rounds=3)
    assert compiled.report.backend == "onnxruntime (fallback from tvm)"
    assert "runs in ONNX Runtime instead" in compiled.report.tvm.fallback
    kept = sparc.compile(model, example_inputs=(x,), backend="tvm", latency_rounds=3,
                         backend_options={"fallback": False})
    assert kept.report.backend == "tvm"


def test_host_library_round_trip(mlp_model, tmp_path):
    model, x = mlp_model
    compiled = sparc.compile(model, example_inputs=(x,), latency_rounds=0)
    path = compiled.export_library(tmp_path / "mlp.so", {"x": x.shape})
    runner = load_library(path)
    np.testing.assert_allclose(runner.run({"x": x})[compiled.output_names[0]], compiled(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(sparc.SparcError, match="compiled for it"):
        runner.run({"x": x[:1]})


def test_aarch64_library_is_an_aarch64_elf(mlp_model, tmp_path):
    model, x = mlp_model
    compiled = sparc.compile(model, example_inputs=(x,), latency_rounds=0)
    path = compiled.export_library(tmp_path / "mlp-aarch64.so", {"x": x.shape}, target="aarch64")
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.long
def test_aarch64_library_runs_under_qemu():
    """Downloads an arm64 Python sysroot and TVM wheels once (Debian, PyPI), ~1 minute."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "aarch64_qemu_check.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=850)  # inside pytest-timeout's 900 s
    assert done.returncode == 0 and "PASS" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "bsr 16x1" in done.stdout  # the sparse kernels ran on aarch64, not only dense ones


class SharedPreActivation(torch.nn.Module):
    """fc's output feeds a Sigmoid, a Mul and a Relu: no epilogue may be fused into fc."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x):
        y = self.fc(x)
        return self.head(torch.sigmoid(y) * y + torch.relu(y))


def test_an_activation_is_not_fused_when_its_input_has_other_readers():
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    compiled = sparc.compile(seeded(SharedPreActivation), example_inputs=(torch.from_numpy(x),), backend="tvm",
                             latency_rounds=0)
    layouts = compiled.report.tvm.layouts
    assert len(layouts) == 2  # one kernel per linear layer: fc is not computed twice
    np.testing.assert_allclose(compiled(x), seeded(SharedPreActivation)(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


class SwiGLU(torch.nn.Module):
    """A Llama-style MLP: down(silu(gate(x)) · up(x))."""

    def __init__(self):
        super().__init__()
        self.gate, self.up = torch.nn.Linear(16, 32, bias=False), torch.nn.Linear(16, 32, bias=False)
        self.down = torch.nn.Linear(32, 16, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


def test_silu_written_as_x_times_sigmoid_is_fused():
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    compiled = sparc.compile(seeded(SwiGLU), example_inputs=(torch.from_numpy(x),), backend="tvm", latency_rounds=0)
    layouts = [choice.summary() for choice in compiled.report.tvm.layouts]
    assert len(layouts) == 3 and sum("+ silu" in n for n in layouts) == 1
    np.testing.assert_allclose(compiled(x), seeded(SwiGLU)(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.long
def test_a_legacy_exported_bert_imports_and_gets_sparc_kernels():
    """paraphrase-MiniLM-L3-v2 as the torch legacy exporter wrote it (a pip wheel's file: Shape →
    Gather → Concat shape arithmetic, Expand of the attention mask) imports into TVM and its 18
    linear layers are matched to sparc's kernels."""
    from sparc.eval import zoo

    path = str(zoo.paraphrase_minilm_onnx())
    ids = np.random.default_rng(0).integers(1000, 2000, (1, 32))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    compiled = sparc.compile(path, calibration=[feeds, feeds], backend="tvm", backend_options={"fallback": False},
                             recipe=[BlockSparsity(block=(16, 1), density=0.3)], threads=1, latency_rounds=0)
    build = compiled.report.tvm
    assert len(build.layouts) == 18 and build.agreement.max_rel < 1e-3


@pytest.mark.parametrize("opset", [pytest.param(14, marks=pytest.mark.long), 17])  # 14: the first with scaled_dot_product_attention
def test_legacy_exports_of_minilm_import_and_get_sparc_kernels(minilm, minilm_batches, tmp_path, opset):
    """The TorchScript exporter's MiniLM (Gemm-free MatMuls on stored weights, masks built by
    ConstantOfShape/Expand/Where, GELU as Erf arithmetic, LayerNorm decomposed below opset 17)
    imports, every linear layer gets a sparc kernel, GELU is fused into the up projections,
    and the outputs match ONNX Runtime on the same file."""
    feeds = {k: v[:2] for k, v in minilm_batches[0].items()}
    path = tmp_path / f"minilm-{opset}.onnx"
    torch.onnx.export(minilm.module, tuple(zoo.torch_inputs(feeds).values()), str(path), dynamo=False,
                      opset_version=opset, input_names=list(feeds), output_names=["embedding"],
                      dynamic_axes={name: {0: "batch", 1: "seq"} for name in feeds})
    runner = TvmRunner(load_onnx(path), threads=1, choose_layouts=False)
    ours = runner.run(feeds)["embedding"]
    assert len(runner.choices) == 36
    assert sum(choice.activation == "gelu" for choice in runner.choices) == 6
    np.testing.assert_allclose(ours, OrtRunner(load_onnx(path)).run(feeds)["embedding"], rtol=1e-4, atol=1e-5)


def test_the_thread_pool_takes_the_threads_it_is_given():
    """TVM's default pool is half the hardware threads (one on a 2-core VM); set_threads lifts it."""
    for threads in (2, 1):
        set_threads(threads)
        assert tvm.get_global_func("runtime.NumThreads")() == threads
