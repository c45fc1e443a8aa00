"""Text generation: compile SmolLM2 with its KV cache, export it, and generate with nothing but
onnxruntime and the tokenizer.

    python examples/generate_onnxruntime.py [--out out] [--quick]

``sparc.compile`` of the Hugging Face model captures prefill and decode in one graph with
``past_key_values.{i}.key|value`` inputs and ``present.{i}.key|value`` outputs (the Optimum
layout). The recipe keeps 60% of every projection's weights (Wanda, calibrated on Wikipedia
text). The deployment side below is a plain greedy loop over an ``onnxruntime.InferenceSession``.
"""

import argparse
from pathlib import Path

import numpy as np
import onnxruntime

import sparc
from sparc.eval import datasets, quality, zoo

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="out", help="output folder (default ./out)")
parser.add_argument("--quick", action="store_true", help="fewer calibration windows, fewer new tokens")
args = parser.parse_args()

lm = zoo.smollm2().module.lm  # transformers LlamaForCausalLM (SmolLM2-135M-Instruct, float32)
tokenizer = zoo.smollm2_tokenizer()
windows = quality.token_windows(tokenizer, "\n\n".join(datasets.enwiki_articles()), window=256,
                                count=3 if args.quick else 16)
compiled = sparc.compile(lm, calibration=[{"input_ids": w} for w in windows],
                         recipe=[sparc.passes.UnstructuredSparsity(density=0.6, method="wanda", sequential=False)])
print(compiled.report)
path = compiled.export(Path(args.out) / "smollm2_decoder.onnx")

# --- what the deployment side does: no sparc below this line ---
session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
kv_heads, head_dim = session.get_inputs()[3].shape[1], session.get_inputs()[3].shape[3]
past = {name: np.zeros((1, kv_heads, 0, head_dim), np.float32) for name in past_names}
prompt = "The printing press changed Europe because"
ids = tokenizer(prompt, return_tensors="np")["input_ids"].astype(np.int64)
generated, length = [], 0
for _ in range(8 if args.quick else 40):
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, length + ids.shape[1]), np.int64),
             "position_ids": np.arange(length, length + ids.shape[1], dtype=np.int64)[None], **past}
    logits, *presents = session.run(None, feeds)
    past = {name: value for name, value in zip(past_names, presents)}
    length += ids.shape[1]
    ids = np.array([[int(logits[0, -1].argmax())]], np.int64)
    generated.append(int(ids[0, 0]))
print("generated:", prompt + tokenizer.decode(generated, skip_special_tokens=True))
