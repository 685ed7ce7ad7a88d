// Times each built-in kernel natively and in headless Chromium (WebAssembly in a Web Worker)
// on the inputs of bench/inputs.json, and prints the ratios and their geometric mean.
// Run through bench/wasm_vs_native.sh, which builds what this needs.
//
//   node bench/wasm_vs_native.mjs --native <bench_native binary> [--native-soft <binary>]
//                                 [--runs N] [--dist frontend/dist]
//
// Both sides run the very same Rust (grid_worker_wasm::KernelBench → grid_kernels::run). After
// a warm-up (V8 tiers hot wasm up to its optimising compiler), N rounds alternate one native
// and one wasm run of every kernel, so background load hits both alike; medians (and
// minimums) are compared. Output digests are compared too: they must be identical.

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
const require = createRequire(join(root, 'frontend', 'package.json'));
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
// The same policy grid-server sends (server/src/web.rs), so the page runs as it would there.
const CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; " +
  "worker-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.wasm': 'application/wasm', '.json': 'application/json' };

function parseArgs(argv) {
  const args = { runs: 7, dist: join(root, 'frontend', 'dist') };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (key === '--native') args.native = value;
    else if (key === '--native-soft') args.nativeSoft = value;
    else if (key === '--runs') args.runs = Math.max(1, Number.parseInt(value, 10) || 7);
    else if (key === '--dist') args.dist = resolve(value);
    else throw new Error(`unknown argument ${key}`);
  }
  if (!args.native) throw new Error('--native <bench_native binary> is required');
  return args;
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

function native(binary, runs) {
  const out = execFileSync(binary, [join(root, 'bench', 'inputs.json'), String(runs)], { encoding: 'utf8' });
  return out.trim().split('\n').map((line) => JSON.parse(line));
}

/** Serve `dist` on 127.0.0.1 with the master's headers; resolves to the server. */
function serveDist(dist) {
  const server = createServer((request, response) => {
    const path = normalize(decodeURIComponent(new URL(request.url, 'http://x').pathname));
    const file = join(dist, path === '/' ? 'bench.html' : path);
    if (!file.startsWith(dist)) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = readFileSync(file);
      response.writeHead(200, {
        'content-type': TYPES[extname(file)] || 'application/octet-stream',
        'content-security-policy': CSP,
        'cache-control': 'no-cache',
      });
      response.end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  return new Promise((done) => server.listen(0, '127.0.0.1', () => done(server)));
}

/** The benchmark page in headless Chromium; `measure(runs, warmup)` times every kernel. */
async function openPage(dist) {
  const server = await serveDist(dist);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/bench.html`);
  await page.waitForFunction(() => window.gridBench !== undefined);
  return {
    version: browser.version(),
    measure: (runs, warmup) => page.evaluate(([r, w]) => window.gridBench.measure(r, w), [runs, warmup]),
    close: async () => {
      await browser.close();
      server.close();
    },
  };
}

const pad = (text, width) => String(text).padStart(width);
const geomean = (values) => Math.exp(values.reduce((sum, v) => sum + Math.log(v), 0) / values.length);

/** Per kernel: every round's time, and the output digest. */
function collect(into, results) {
  for (const { kernel, ms, digest } of results) {
    const entry = (into[kernel] ??= { ms: [], digests: new Set() });
    entry.ms.push(...ms);
    entry.digests.add(digest);
  }
}

function table(title, nativeTimes, wasmTimes) {
  console.log(`\n${title}`);
  console.log(`${'kernel'.padEnd(12)}${pad('native ms', 12)}${pad('wasm ms', 12)}${pad('ratio', 9)}` +
    `${pad('min ratio', 11)}   outputs`);
  const ratios = [];
  const minRatios = [];
  let identical = true;
  for (const [kernel, n] of Object.entries(nativeTimes)) {
    const w = wasmTimes[kernel];
    if (!w) throw new Error(`no wasm result for ${kernel}`);
    const ratio = median(w.ms) / median(n.ms);
    const minRatio = Math.min(...w.ms) / Math.min(...n.ms);
    ratios.push(ratio);
    minRatios.push(minRatio);
    const digests = new Set([...n.digests, ...w.digests]);
    const same = digests.size === 1;
    identical &&= same;
    console.log(`${kernel.padEnd(12)}${pad(median(n.ms).toFixed(1), 12)}${pad(median(w.ms).toFixed(1), 12)}` +
      `${pad(ratio.toFixed(2) + '×', 9)}${pad(minRatio.toFixed(2) + '×', 11)}   ${same ? 'identical' : 'DIFFERENT'}`);
  }
  console.log(`geometric mean wasm/native: ${geomean(ratios).toFixed(2)}× of medians, ` +
    `${geomean(minRatios).toFixed(2)}× of minimums (target ≤ 1.10×)`);
  return identical;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const cpu = (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) || [])[1] ?? 'unknown CPU';
  const page = await openPage(args.dist);
  const nativeTimes = {};
  const softTimes = {};
  const wasmTimes = {};
  try {
    // Warm up: Chromium tiers the wasm up; the first native run loads caches.
    await page.measure(1, true);
    for (let round = 1; round <= args.runs; round++) {
      process.stderr.write(`round ${round}/${args.runs}\r`);
      // Alternate the sides, so both meet the same background load.
      collect(nativeTimes, native(args.native, 1));
      collect(wasmTimes, await page.measure(1, false));
      if (args.nativeSoft) collect(softTimes, native(args.nativeSoft, 1));
    }
  } finally {
    await page.close();
  }
  console.log(`${args.runs} alternating rounds per kernel after warm-up; ratio = median wasm / median native`);
  console.log(`CPU: ${cpu}, load average now ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
  console.log(`Chromium ${page.version} (headless); wasm32-unknown-unknown release built by cargo, wasm-bindgen --target web`);
  const identical = table('native: release build (sha2 uses the CPU\'s SHA instructions when present)', nativeTimes, wasmTimes);
  if (args.nativeSoft) {
    table('reference: native with sha2\'s portable code (feature bench-soft-sha, no SHA-NI)', softTimes, wasmTimes);
  }
  if (!identical) {
    console.log('\nERROR: wasm and native outputs differ: mixed replicas could never agree');
    process.exit(1);
  }
}

main().catch((error) => {
  console.error(`wasm_vs_native: ${error.stack || error}`);
  process.exit(1);
});
