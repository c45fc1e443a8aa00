"""ChannelCrop: remove 30% of MiniLM's coupled channel groups (attention heads, FFN units).

    python examples/channel_crop.py [--out out] [--quick]

Groups of channels that must be cut together are found on the ONNX graph; the least important
(L2 of the weights times the calibration activations) go, and the smaller dense model runs
in any runtime. Prints the compile report (parameters, MACs, error and latency vs the
original) and the sentence-similarity quality before and after.
"""

from pathlib import Path

from minilm_common import arguments, compile_minilm, print_lee_correlation

from sparc.passes import ChannelCrop

args = arguments(__doc__.splitlines()[0])
minilm, compiled = compile_minilm([ChannelCrop(ratio=0.3, importance="activation")], args.quick)
print(compiled.report)
print_lee_correlation(minilm, compiled)
print(f"wrote {compiled.export(Path(args.out) / 'minilm_channel_crop.onnx')}")
