// Run ONNX models in onnxruntime-web (WebAssembly) under Node.js, as a browser would.
// usage: node runner.mjs DIR
// DIR/job.json: {"models": {name: {path, external: [data files beside it]}}, "inputs": {input: {file, dtype, shape}},
//                "threads": n, "rounds": r, "warmup": w}
// Writes each model's outputs as raw little-endian files listed in DIR/outputs.json
// ({name: {output: {file, dtype, shape}}}) and, when rounds > 0, DIR/timings.json:
// {name: [ms per round]}, the models run interleaved in an order rotating each round.
import fs from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import * as ort from "onnxruntime-web";

const dir = process.argv[2];
const job = JSON.parse(fs.readFileSync(path.join(dir, "job.json"), "utf8"));
const TYPED = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, bool: Uint8Array };

ort.env.wasm.numThreads = job.threads;

function readFeeds() {
  const feeds = {};
  for (const [name, spec] of Object.entries(job.inputs)) {
    const bytes = fs.readFileSync(path.join(dir, spec.file));
    const Typed = TYPED[spec.dtype];
    const data = new Typed(bytes.buffer, bytes.byteOffset, bytes.byteLength / Typed.BYTES_PER_ELEMENT);
    feeds[name] = new ort.Tensor(spec.dtype, data, spec.shape);
  }
  return feeds;
}

function writeOutputs(name, session, results) {
  const listing = {};
  for (const [index, output] of session.outputNames.entries()) {
    const tensor = results[output];
    const file = `${name}_output_${index}.bin`;
    fs.writeFileSync(path.join(dir, file), Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
    listing[output] = { file, dtype: tensor.type, shape: tensor.dims };
  }
  return listing;
}

const feeds = readFeeds();
const sessions = {};
const outputs = {};
for (const [name, model] of Object.entries(job.models)) {
  const externalData = model.external.map((file) => ({ path: file, data: new Uint8Array(fs.readFileSync(path.join(path.dirname(model.path), file))) }));
  sessions[name] = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(model.path)), { externalData });
  const wanted = Object.fromEntries(sessions[name].inputNames.map((input) => [input, feeds[input]]));
  outputs[name] = writeOutputs(name, sessions[name], await sessions[name].run(wanted));
}
fs.writeFileSync(path.join(dir, "outputs.json"), JSON.stringify(outputs));

if (job.rounds > 0) {
  const names = Object.keys(sessions);
  const runOnce = async (name) => {
    const session = sessions[name];
    const wanted = Object.fromEntries(session.inputNames.map((input) => [input, feeds[input]]));
    const start = performance.now();
    await session.run(wanted);
    return performance.now() - start;
  };
  for (let i = 0; i < job.warmup; i++) for (const name of names) await runOnce(name);
  const samples = Object.fromEntries(names.map((name) => [name, []]));
  for (let round = 0; round < job.rounds; round++) {
    const shift = round % names.length;
    for (const name of [...names.slice(shift), ...names.slice(0, shift)]) samples[name].push(await runOnce(name));
  }
  fs.writeFileSync(path.join(dir, "timings.json"), JSON.stringify(samples));
}
