// The browser half of bench/modules.sh: one Collatz chunk of collatz.wasm in headless
// Chromium, timed between native and wasmtime runs of the same chunk, and the cost of a
// near-empty chunk in the browser. Run through bench/modules.sh, which builds what this needs.
//
//   node bench/modules.mjs --native <module_bench binary> --wasm <collatz.wasm>
//                          [--runs N] [--chunks N] [--start S --end E]
//
// The page does what the browser worker's sandbox (frontend/src/sandbox.js) does per chunk:
// a fresh instance of a module compiled once (WebAssembly.compile), the input written at
// grid_alloc(len), grid_run, the output copied out and parsed. It runs on the page's thread
// rather than in a Web Worker: the same engine and the same code, without the postMessage.
// The memory cap is not written into the module (it does not change the generated code).
//
// V8 first runs a module with its baseline compiler (Liftoff) and compiles hot functions with
// its optimising one (TurboFan) in the background; a call already running stays in baseline
// code to its end. So the first chunk is reported on its own; the rounds that follow run
// optimised code, as a volunteer's tab does after its first chunk of a job.

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
const require = createRequire(join(root, 'frontend', 'package.json'));
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

function parseArgs(argv) {
  const args = { runs: 7, chunks: 2000, start: 1, end: 500_001 };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (key === '--native') args.native = value;
    else if (key === '--wasm') args.wasm = value;
    else if (['--runs', '--chunks', '--start', '--end'].includes(key)) {
      const number = Number.parseInt(value, 10);
      if (!(number >= 1)) throw new Error(`${key} wants a positive integer, not ${value}`);
      args[key.slice(2)] = number;
    } else throw new Error(`unknown argument ${key}`);
  }
  if (!args.native || !args.wasm) throw new Error('--native <module_bench binary> and --wasm <collatz.wasm> are required');
  return args;
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

/** JSON text with object keys sorted, to compare outputs whatever order they were written in. */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** One native and one wasmtime run of the chunk (a fresh process, which compiles the module). */
function nativeRound(args) {
  const out = execFileSync(args.native, [args.wasm, '--once', '--start', String(args.start), '--end', String(args.end)],
    { encoding: 'utf8' });
  return JSON.parse(out);
}

/**
 * Runs in the page: compiles the module once and installs `window.bench`, which runs chunks
 * the sandbox's way. Resolves to the compile time, ms.
 */
function pageSetup(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const encoder = new TextEncoder();
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const chunk = (module, input) => {
    const { memory, grid_alloc: gridAlloc, grid_run: gridRun } = new WebAssembly.Instance(module, {}).exports;
    const ptr = gridAlloc(input.length) >>> 0;
    new Uint8Array(memory.buffer, ptr, input.length).set(input);
    const packed = BigInt.asUintN(64, gridRun(ptr, input.length));
    const out = new Uint8Array(memory.buffer, Number(packed >> 32n), Number(packed & 0xffffffffn)).slice();
    return JSON.parse(decoder.decode(out));
  };
  const started = performance.now();
  return WebAssembly.compile(bytes).then((module) => {
    const compileMs = performance.now() - started;
    window.bench = {
      /** One chunk: {ms, output}. */
      once(text) {
        const input = encoder.encode(text);
        const started = performance.now();
        const output = chunk(module, input);
        return { ms: performance.now() - started, output };
      },
      /** `count` chunks one after the other: ms in all. */
      many(text, count) {
        const input = encoder.encode(text);
        const started = performance.now();
        for (let i = 0; i < count; i++) chunk(module, input);
        return performance.now() - started;
      },
    };
    return compileMs;
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const input = `{"end":${args.end},"start":${args.start}}`;
  const small = '{"end":28,"start":27}';
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const times = { native: [], wasmtime: [], browser: [] };
  const perChunk = [];
  let first;
  let compileMs;
  const outputs = new Set();
  try {
    const page = await browser.newPage();
    const base64 = readFileSync(args.wasm).toString('base64');
    compileMs = await page.evaluate(pageSetup, base64);
    // The first chunk: baseline code; it also tiers the module up for the next ones.
    first = await page.evaluate((text) => window.bench.once(text), input);
    outputs.add(canonical(first.output));
    await page.evaluate((text) => window.bench.once(text), input);
    for (let round = 1; round <= args.runs; round++) {
      process.stderr.write(`round ${round}/${args.runs}\r`);
      // Alternate the sides, so both meet the same background load.
      const native = nativeRound(args);
      times.native.push(native.native_ms);
      times.wasmtime.push(native.wasmtime_ms);
      outputs.add(canonical(native.output));
      const web = await page.evaluate((text) => window.bench.once(text), input);
      times.browser.push(web.ms);
      outputs.add(canonical(web.output));
      perChunk.push(await page.evaluate(([text, n]) => window.bench.many(text, n), [small, args.chunks]) * 1000 / args.chunks);
    }
    process.stderr.write(`${' '.repeat(20)}\r`);
  } finally {
    await browser.close();
  }
  const [n, w, b] = [median(times.native), median(times.wasmtime), median(times.browser)];
  const row = (name, values) => console.log(`  ${name.padEnd(44)}median ${median(values).toFixed(1).padStart(8)} ms` +
    `   min ${Math.min(...values).toFixed(1).padStart(8)} ms`);
  console.log(`\nThe same chunk in headless Chromium ${browser.version()}, ${args.runs} rounds alternating ` +
    'native, wasmtime and browser');
  row('native (example-collatz linked in)', times.native);
  row('wasmtime (collatz.wasm, TaskModule::run)', times.wasmtime);
  row('Chromium (collatz.wasm, optimised code)', times.browser);
  console.log(`  ratio Chromium/native ${(b / n).toFixed(2)}×, Chromium/wasmtime ${(b / w).toFixed(2)}×, ` +
    `wasmtime/native ${(w / n).toFixed(2)}× (medians)`);
  console.log(`  first chunk in Chromium (baseline code, Liftoff): ${first.ms.toFixed(1)} ms ` +
    `(${(first.ms / n).toFixed(2)}× native); WebAssembly.compile: ${compileMs.toFixed(1)} ms ` +
    '(V8 compiles most functions lazily, at their first call)');
  console.log(`  one chunk of collatz.wasm on ${small}, ${args.chunks} chunks per round: ` +
    `median ${median(perChunk).toFixed(1)} µs, min ${Math.min(...perChunk).toFixed(1)} µs`);
  if (outputs.size !== 1) {
    console.log(`\nERROR: the outputs differ: ${[...outputs].join(' / ')}`);
    process.exit(1);
  }
  console.log(`  output (identical on all sides): ${[...outputs][0]}`);
}

main().catch((error) => {
  console.error(`modules: ${error.stack || error}`);
  process.exit(1);
});
