// The benchmark page: runs the kernels in WebAssembly in a Web Worker (bench-worker.js) on
// the inputs of bench/inputs.json (copied to bench-inputs.json by the web build) and shows
// the timings. bench/wasm_vs_native.mjs drives it through `window.gridBench.measure`,
// alternating rounds with the native runs so both see the same machine load.

const $ = (id) => document.getElementById(id);

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

let worker = null;
let cases = null;

async function loadCases() {
  if (cases) return cases;
  const response = await fetch('./bench-inputs.json', { cache: 'no-store' });
  if (!response.ok) throw new Error(`bench-inputs.json: HTTP ${response.status}`);
  cases = await response.json();
  return cases;
}

/** Time every case `runs` times (after one warm-up run each if `warmup`). */
async function measure(runs, warmup) {
  const all = await loadCases();
  worker ??= new Worker(new URL('./bench-worker.js', import.meta.url), { type: 'module' });
  return new Promise((resolve, reject) => {
    const results = [];
    const onError = (event) => {
      cleanup();
      reject(new Error(event.message || 'the benchmark worker failed'));
    };
    const onMessage = ({ data }) => {
      if (data.type === 'progress') {
        $('bench-state').textContent = `running ${data.kernel}…`;
      } else if (data.type === 'result') {
        results.push(data.result);
      } else if (data.type === 'done') {
        cleanup();
        resolve(results);
      } else if (data.type === 'error') {
        cleanup();
        reject(new Error(data.message));
      }
    };
    const cleanup = () => {
      worker.removeEventListener('message', onMessage);
      worker.removeEventListener('error', onError);
    };
    worker.addEventListener('message', onMessage);
    worker.addEventListener('error', onError);
    worker.postMessage({ cases: all, runs, warmup });
  });
}

function show(results) {
  $('results').replaceChildren();
  for (const result of results) {
    const row = document.createElement('tr');
    for (const text of [result.kernel, median(result.ms).toFixed(1), String(result.ms.length),
      result.digest.slice(0, 16) + '…']) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.append(cell);
    }
    $('results').append(row);
  }
  $('bench-json').textContent = JSON.stringify(results);
}

async function run() {
  const params = new URLSearchParams(location.search);
  const runs = Math.max(1, Math.min(50, Number.parseInt(params.get('runs') ?? '5', 10) || 5));
  $('run').disabled = true;
  $('bench-state').textContent = 'starting…';
  delete $('bench-state').dataset.done;
  try {
    show(await measure(runs, true));
    $('bench-state').textContent = 'done';
    $('bench-state').dataset.done = 'true';
  } catch (error) {
    $('bench-state').textContent = `failed: ${error.message}`;
    $('bench-state').dataset.done = 'error';
  } finally {
    $('run').disabled = false;
  }
}

window.gridBench = { measure };
$('run').addEventListener('click', run);
if (new URLSearchParams(location.search).get('autorun') === '1') run();
