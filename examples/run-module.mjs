// Run a grid task module on your machine the way a worker runs one chunk (docs/task-abi.md),
// with Node's own WebAssembly engine (V8, the engine of Chromium-based volunteers):
//
//   node examples/run-module.mjs MODULE.wasm INPUT [INPUT...]
//
// Each INPUT is the chunk's input as JSON text, passed to the module byte for byte: write it
// the way the grid does (canonical JSON: object keys sorted, no whitespace), e.g.
// '{"end":10,"start":1}'. Every input gets a fresh instance, as on the grid. Prints
// `INPUT -> OUTPUT` per chunk, or `INPUT -> FAILED: reason`; exits with 1 if any chunk failed.
//
// Not reproduced here: the job's time and memory limits, and the grid's exact failure texts
// (those come from the worker; see docs/task-abi.md).

import { readFileSync } from 'node:fs';

const [file, ...inputs] = process.argv.slice(2);
if (!file || inputs.length === 0) {
  console.error('usage: node run-module.mjs MODULE.wasm INPUT [INPUT...]');
  process.exit(2);
}

const module = new WebAssembly.Module(readFileSync(file));
const imports = WebAssembly.Module.imports(module);
if (imports.length > 0) {
  const { module: from, name } = imports[0];
  console.error(`refused: the module imports \`${from}\`.\`${name}\`; task modules may import nothing`);
  process.exit(1);
}
const exported = new Map(WebAssembly.Module.exports(module).map((e) => [e.name, e.kind]));
for (const [name, kind] of [['memory', 'memory'], ['grid_alloc', 'function'], ['grid_run', 'function']]) {
  if (exported.get(name) !== kind) {
    console.error(`refused: the module must export \`${name}\` (a ${kind})`);
    process.exit(1);
  }
}

/** One chunk: the output text, or throws with the reason it failed. */
function runChunk(input) {
  const { memory, grid_alloc, grid_run } = new WebAssembly.Instance(module, {}).exports;
  const bytes = new TextEncoder().encode(input);
  // The ABI's i32 addresses and lengths are unsigned.
  const ptr = grid_alloc(bytes.length) >>> 0;
  if (ptr + bytes.length > memory.buffer.byteLength) {
    throw new Error(`bad input buffer: grid_alloc(${bytes.length}) returned ${ptr}, outside the memory`);
  }
  new Uint8Array(memory.buffer, ptr, bytes.length).set(bytes);
  const packed = BigInt.asUintN(64, grid_run(ptr, bytes.length));
  const outPtr = Number(packed >> 32n);
  const outLen = Number(packed & 0xffffffffn);
  // Read `memory.buffer` again: grid_run may have grown the memory.
  if (outPtr + outLen > memory.buffer.byteLength) {
    throw new Error(`bad output: grid_run returned ${outLen} bytes at ${outPtr}, outside the memory`);
  }
  const out = new Uint8Array(memory.buffer, outPtr, outLen);
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(out);
  } catch {
    throw new Error('bad output: not UTF-8 text');
  }
  try {
    JSON.parse(text);
  } catch (error) {
    throw new Error(`bad output: not JSON: ${error.message}`);
  }
  return text;
}

let failed = false;
for (const input of inputs) {
  try {
    console.log(`${input} -> ${runChunk(input)}`);
  } catch (error) {
    // A WebAssembly.RuntimeError is a trap; RangeError is V8's call stack exhaustion.
    console.log(`${input} -> FAILED: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
