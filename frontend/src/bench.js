// The benchmark page: runs bench-worker.js (the kernels, in WebAssembly, in a Web Worker) on
// the inputs of bench/inputs.json (copied to bench-inputs.json by the web build), shows the
// timings and leaves them as JSON in #bench-json for bench/wasm_vs_native.mjs.

const $ = (id) => document.getElementById(id);

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function run() {
  const params = new URLSearchParams(location.search);
  const runs = Math.max(1, Math.min(50, Number.parseInt(params.get('runs') ?? '5', 10) || 5));
  $('run').disabled = true;
  $('bench-state').textContent = 'loading inputs…';
  $('results').replaceChildren();
  const response = await fetch('./bench-inputs.json', { cache: 'no-store' });
  if (!response.ok) throw new Error(`bench-inputs.json: HTTP ${response.status}`);
  const cases = await response.json();
  const worker = new Worker(new URL('./bench-worker.js', import.meta.url), { type: 'module' });
  const results = [];
  await new Promise((resolve, reject) => {
    worker.addEventListener('error', (event) => reject(new Error(event.message || 'worker failed')));
    worker.addEventListener('message', ({ data }) => {
      if (data.type === 'progress') {
        $('bench-state').textContent = `running ${data.kernel}…`;
      } else if (data.type === 'result') {
        results.push(data.result);
        const row = document.createElement('tr');
        for (const text of [data.result.kernel, median(data.result.ms).toFixed(1),
          String(data.result.ms.length), data.result.digest.slice(0, 16) + '…']) {
          const cell = document.createElement('td');
          cell.textContent = text;
          row.append(cell);
        }
        $('results').append(row);
      } else if (data.type === 'done') {
        resolve();
      } else if (data.type === 'error') {
        reject(new Error(data.message));
      }
    });
    worker.postMessage({ cases, runs });
  });
  worker.terminate();
  $('bench-json').textContent = JSON.stringify(results);
  $('bench-state').textContent = 'done';
  $('bench-state').dataset.done = 'true';
  $('run').disabled = false;
}

function start() {
  run().catch((error) => {
    $('bench-state').textContent = `failed: ${error.message}`;
    $('bench-state').dataset.done = 'error';
    $('run').disabled = false;
  });
}

$('run').addEventListener('click', start);
if (new URLSearchParams(location.search).get('autorun') === '1') start();
