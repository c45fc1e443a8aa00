"""BlockSparsity: MiniLM's FFN layers at half density in 16×1 blocks, chosen by SparseGPT.

    python examples/block_sparsity.py [--out out] [--quick]

Whole blocks of 16 output rows × 1 input column are kept or dropped (the layout sparse
kernels run fast); SparseGPT updates the remaining weights to make up for the dropped ones.
Layers the density map does not name stay dense (``default_density`` 1.0).
"""

from pathlib import Path

from minilm_common import arguments, compile_minilm, print_lee_correlation

from sparc.passes import BlockSparsity

args = arguments(__doc__.splitlines()[0])
recipe = [BlockSparsity(block=(16, 1), density={"*intermediate*": 0.5, "*output.dense*": 0.5}, method="sparsegpt")]
minilm, compiled = compile_minilm(recipe, args.quick)
print(compiled.report)
print_lee_correlation(minilm, compiled)
print(f"wrote {compiled.export(Path(args.out) / 'minilm_block.onnx')}")
