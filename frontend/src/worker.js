// One compute thread of the contribute page: a module Web Worker running one BrowserWorker
// (Rust/WASM, worker-wasm/src/browser.rs), which owns its WebSocket to the master. Chunks of
// uploaded task modules run in a sandbox Web Worker of this thread's own (modules.js,
// sandbox.js), so a module that loops or traps never stops this thread, nor the page.
//
// Messages from the page: {type: 'start', url, workerId, cpuPercent}, {type: 'pause'},
// {type: 'cpu', percent}, {type: 'stop'}. To the page: {type: 'status', status} and
// {type: 'fatal', message} (the page then replaces this Web Worker).

import init, { BrowserWorker } from './grid_worker_wasm.js';
import { ModuleHost } from './modules.js';

const ready = init({ module_or_path: new URL('./grid_worker_wasm_bg.wasm', import.meta.url) });
let worker = null;

function fatal(error) {
  self.postMessage({ type: 'fatal', message: String(error?.message ?? error) });
}

self.addEventListener('message', async (event) => {
  const message = event.data;
  try {
    await ready;
  } catch (error) {
    fatal(error);
    return;
  }
  try {
    switch (message?.type) {
      case 'start':
        worker ??= new BrowserWorker(
          String(message.url),
          String(message.workerId),
          Number(message.cpuPercent) || 100,
          (status) => self.postMessage({ type: 'status', status }),
          new ModuleHost(),
        );
        worker.start();
        break;
      case 'pause':
        worker?.pause();
        break;
      case 'cpu':
        worker?.set_cpu_percent(Number(message.percent) || 100);
        break;
      case 'stop':
        worker?.pause();
        worker?.free();
        worker = null;
        self.close();
        break;
      default:
        break;
    }
  } catch (error) {
    fatal(error);
  }
});
