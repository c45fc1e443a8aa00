"""NMSparsity: 2:4 sparsity of every MiniLM linear layer, masks chosen by Wanda.

    python examples/nm_sparsity.py [--out out] [--quick]

Wanda keeps, in every group of 4 input weights, the 2 with the largest |W|·‖x‖ (x the layer's
calibration inputs). The mask is applied and recorded on each layer as a ``sparc.algorithms.sparsity``
annotation that the exported ONNX keeps; ``sparc inspect`` checks it holds. Prints the report,
the quality before and after, and each layer's verified pattern.
"""

from pathlib import Path

from minilm_common import arguments, compile_minilm, print_lee_correlation

from sparc.passes import NMSparsity
from sparc.summary import summarize

args = arguments(__doc__.splitlines()[0])
minilm, compiled = compile_minilm([NMSparsity(n=2, m=4, method="wanda")], args.quick)
print(compiled.report)
print_lee_correlation(minilm, compiled)
for layer in summarize(compiled.model, {}).layers:
    print(f"{layer.name}: density {layer.density:.3f}, {layer.pattern} {'holds' if layer.verified else 'VIOLATED'}")
print(f"wrote {compiled.export(Path(args.out) / 'minilm_2of4.onnx')}")
