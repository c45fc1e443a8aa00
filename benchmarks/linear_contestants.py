"""Single linear layers as benchmark contestants: ONNX Runtime's dense MatMul and sparc's TVM
kernels, on the linear shapes of MiniLM-L6 and SmolLM2-135M."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import tvm

from sparc.backends.tvm import kernels
from sparc.runtime import OrtRunner

SHAPES = {  # (K in, N out)
    "minilm qkvo": (384, 384), "minilm up": (384, 1536), "minilm down": (1536, 384),
    "smollm2 qo": (576, 576), "smollm2 kv": (576, 192), "smollm2 up": (576, 1536), "smollm2 down": (1536, 576),
}


def ort_matmul(weight_nk: np.ndarray, x: np.ndarray, threads: int):
    """y = x · Wᵀ as one ONNX MatMul in ONNX Runtime: a call with x."""
    graph = ir.Graph([ir.Value(name="x", shape=ir.Shape(x.shape), type=ir.TensorType(ir.DataType.FLOAT))], [],
                     nodes=[], opset_imports={"": 17})
    w = ir.Value(name="w", const_value=ir.tensor(np.ascontiguousarray(weight_nk.T)))
    graph.register_initializer(w)
    node = ir.node("MatMul", [graph.inputs[0], w])
    graph.append(node)
    graph.outputs.append(node.outputs[0])
    node.outputs[0].name = "y"
    runner = OrtRunner(ir.Model(graph, ir_version=10), threads=threads)
    return lambda: runner.run({"x": x})


def tvm_linears(weights: list[np.ndarray], x: np.ndarray, layout, target) -> list:
    """One compiled sparc kernel for ``layout``, one call per weight (each packed on its own)."""
    tensors = kernels.pack(weights[0], layout)
    func = kernels.linear_kernel(x.shape[0], x.shape[1], weights[0].shape[0], layout, tensors, "none")
    run = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)["main"]
    calls = []
    for weight in weights:
        tensors = kernels.pack(weight, layout)
        cols = tensors[0].shape[0] * kernels.PANEL if layout.format == "dense" else weight.shape[0]
        args = [tvm.runtime.tensor(a) for a in (x, *tensors, np.zeros(cols, np.float32),
                                                 np.zeros((x.shape[0], cols), np.float32))]
        calls.append(lambda args=args: run(*args))
    return calls


def tvm_linear(weight_nk: np.ndarray, x: np.ndarray, layout, target):
    return tvm_linears([weight_nk], x, layout, target)[0]


def two_four_mask(rng, n_out: int, k_in: int) -> np.ndarray:
    """A random 2:4 mask: two of every four consecutive inputs kept per output."""
    return (np.argsort(rng.random((n_out, k_in // 4, 4)), axis=2) < 2).reshape(n_out, k_in)
