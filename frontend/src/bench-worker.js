// The benchmark's Web Worker: for each case, parse the input once (KernelBench), run once to
// warm up (V8 tiers hot wasm functions up to its optimising compiler), then time `runs` runs.

import init, { KernelBench } from './grid_worker_wasm.js';

const ready = init({ module_or_path: new URL('./grid_worker_wasm_bg.wasm', import.meta.url) });

self.addEventListener('message', async ({ data }) => {
  try {
    await ready;
    for (const { kernel, input } of data.cases) {
      self.postMessage({ type: 'progress', kernel });
      const bench = new KernelBench(kernel, JSON.stringify(input));
      bench.run();
      const ms = [];
      for (let i = 0; i < data.runs; i++) {
        const started = performance.now();
        bench.run();
        ms.push(performance.now() - started);
      }
      self.postMessage({ type: 'result', result: { kernel, ms, digest: bench.outcome_digest() } });
      bench.free();
    }
    self.postMessage({ type: 'done' });
  } catch (error) {
    self.postMessage({ type: 'error', message: String(error?.message ?? error) });
  }
});
