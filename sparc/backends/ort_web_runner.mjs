// Run an ONNX model in onnxruntime-web (WebAssembly) under Node.js.
// usage: node ort_web_runner.mjs MODEL.onnx DIR   (DIR/inputs.json names the raw input files;
// the outputs are written to DIR as raw little-endian files listed in DIR/outputs.json)
import fs from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-web";

const [modelPath, dir] = process.argv.slice(2);
const TYPED = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, bool: Uint8Array };

ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(modelPath)));
const specs = JSON.parse(fs.readFileSync(path.join(dir, "inputs.json"), "utf8"));
const feeds = {};
for (const [name, spec] of Object.entries(specs)) {
  const bytes = fs.readFileSync(path.join(dir, spec.file));
  const data = new TYPED[spec.dtype](bytes.buffer, bytes.byteOffset, bytes.byteLength / TYPED[spec.dtype].BYTES_PER_ELEMENT);
  feeds[name] = new ort.Tensor(spec.dtype, data, spec.shape);
}
const results = await session.run(feeds);
const listing = {};
for (const [index, name] of session.outputNames.entries()) {
  const tensor = results[name];
  const file = `output_${index}.bin`;
  fs.writeFileSync(path.join(dir, file), Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
  listing[name] = { file, dtype: tensor.type, shape: tensor.dims };
}
fs.writeFileSync(path.join(dir, "outputs.json"), JSON.stringify(listing));
