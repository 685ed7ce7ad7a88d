// The benchmark's Web Worker: times the kernels in WebAssembly. KernelBench parses an input
// once; `run()` is nothing but grid_kernels::run, the same Rust the native side times. The
// first request warms up (V8 compiles hot wasm functions again with its optimising compiler,
// in the background: the first timed runs after a cold start are slower).

import init, { KernelBench } from './grid_worker_wasm.js';

const ready = init({ module_or_path: new URL('./grid_worker_wasm_bg.wasm', import.meta.url) });

self.addEventListener('message', async ({ data }) => {
  try {
    await ready;
    for (const { kernel, input } of data.cases) {
      self.postMessage({ type: 'progress', kernel });
      const bench = new KernelBench(kernel, JSON.stringify(input));
      if (data.warmup) {
        bench.run();
        bench.run();
      }
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
