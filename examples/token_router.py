"""TokenRouter: from block 2 of MiniLM on, each block runs only the half of the tokens a learned
router picks; skipped tokens pass through unchanged.

    python examples/token_router.py [--out out] [--quick]

The router (a 4→16→1 MLP over per-token features, fitted on the calibration data) is part of
the exported graph, so stock ONNX Runtime runs the routed computation. Prints the report
(tokens kept per block, MACs, error, latency) and the quality before and after.
"""

from pathlib import Path

from minilm_common import arguments, compile_minilm, print_lee_correlation

from sparc.passes import TokenRouter

args = arguments(__doc__.splitlines()[0])
minilm, compiled = compile_minilm([TokenRouter(keep=0.5, start_block=2, router="learned")], args.quick)
print(compiled.report)
print_lee_correlation(minilm, compiled)
print(f"wrote {compiled.export(Path(args.out) / 'minilm_routed.onnx')}")
