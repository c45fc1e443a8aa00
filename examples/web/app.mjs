// Sentence similarity in the page: tokenize, run the sparc-compiled MiniLM encoder with
// onnxruntime-web (WebAssembly), cosine of the two (already normalized) embeddings.
import * as ort from "./ort/ort.wasm.min.mjs";
import { WordPiece } from "./tokenizer.mjs";

const MAX_TOKENS = 128;
const status = document.getElementById("status");
ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page

const [vocab, session] = await Promise.all([
  fetch("vocab.txt").then((response) => response.text()),
  ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] }),
]);
const tokenizer = new WordPiece(vocab);

async function embed(text) {
  const ids = tokenizer.encode(text, MAX_TOKENS);
  const shape = [1, ids.length];
  const feeds = {
    input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), shape),
    attention_mask: new ort.Tensor("int64", new BigInt64Array(ids.length).fill(1n), shape),
  };
  const results = await session.run(feeds);
  return { ids, vector: results[session.outputNames[0]].data };
}

async function compare() {
  const started = performance.now();
  const [a, b] = await Promise.all([embed(document.getElementById("a").value), embed(document.getElementById("b").value)]);
  let dot = 0;
  for (let i = 0; i < a.vector.length; i++) dot += a.vector[i] * b.vector[i];
  document.getElementById("similarity").textContent = dot.toFixed(6);
  document.getElementById("tokens").textContent = JSON.stringify([a.ids, b.ids]);
  status.textContent = `computed in ${(performance.now() - started).toFixed(1)} ms`;
}

document.getElementById("compare").addEventListener("click", () => compare().catch((error) => {
  status.textContent = `error: ${error.message}`;
}));
document.getElementById("compare").disabled = false;
status.textContent = "model loaded";
