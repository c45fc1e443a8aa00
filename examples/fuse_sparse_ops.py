"""FuseSparseOps: 2:4-sparse MiniLM layers and their bias/GELU become ``ai.sparc::SparseLinear``.

    python examples/fuse_sparse_ops.py [--out out] [--quick]

Each annotated layer's weight is stored compressed (N:M values and positions) with its
epilogue fused. Two exports: ``format="sparc"`` keeps the compressed ops (smaller file, for
sparc's backends and ``sparc.load``); ``format="standard"`` lowers them back to standard ONNX
that stock ONNX Runtime and onnxruntime-web load. Both give the same outputs.
"""

from pathlib import Path

import numpy as np
from minilm_common import arguments, compile_minilm

import sparc
from sparc.passes import FuseSparseOps, NMSparsity

args = arguments(__doc__.splitlines()[0])
minilm, compiled = compile_minilm([NMSparsity(n=2, m=4), FuseSparseOps()], args.quick)
print(compiled.report)
out = Path(args.out)
packed = compiled.export(out / "minilm_sparse_ops.onnx", format="sparc")
standard = compiled.export(out / "minilm_standard.onnx", format="standard")
print(f"{packed}: {packed.stat().st_size:,} bytes; {standard}: {standard.stat().st_size:,} bytes")
feeds = minilm.make_inputs(["Sparse kernels only pay off when they are measured."], seq=32)
a, b = sparc.load(packed).run(feeds), sparc.load(standard).run(feeds)
print("max difference between the two exports:", max(float(np.abs(a[k] - b[k]).max()) for k in a))
