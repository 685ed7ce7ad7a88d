// The contribute page: starts one Web Worker per thread (worker.js), each running the Rust/WASM
// browser worker with its own WebSocket to the master, and shows what they report.
//
// The page itself never computes, so it stays responsive. It owns what Web Workers cannot
// reach: the volunteer's identity and settings in localStorage, the visibility of the tab.

const ID_KEY = 'grid.volunteer-id';
const THREADS_KEY = 'grid.threads';
const CPU_KEY = 'grid.cpu-percent';
const ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
const MAX_THREADS = 64;
/** Chunks finished within this window count towards the rate and the "computing" state. */
const RATE_WINDOW_MS = 10_000;
const COMPUTING_WINDOW_MS = 3_000;

const $ = (id) => document.getElementById(id);

/** Read localStorage without failing where it is disabled. */
function stored(key) {
  try {
    return window.localStorage.getItem(key);
  } catch {
    return null;
  }
}

function store(key, value) {
  try {
    window.localStorage.setItem(key, value);
    return true;
  } catch {
    return false;
  }
}

/** The volunteer's persistent identity: `browser-` and 16 random hex digits. */
function volunteerId() {
  const existing = stored(ID_KEY);
  if (existing && ID_PATTERN.test(existing)) {
    return { id: existing, persistent: true };
  }
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  const id = 'browser-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return { id, persistent: store(ID_KEY, id) };
}

function defaultThreads() {
  const cores = Number(navigator.hardwareConcurrency) || 2;
  return Math.max(1, Math.min(MAX_THREADS, cores));
}

function clampInt(value, min, max, fallback) {
  const n = Number.parseInt(value, 10);
  return Number.isFinite(n) ? Math.max(min, Math.min(max, n)) : fallback;
}

function masterUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

function formatDuration(ms) {
  let s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min ${s} s`;
  return `${s} s`;
}

/** One thread: a Web Worker and the last status it reported. */
class Slot {
  constructor(index, page) {
    this.index = index;
    this.page = page;
    this.status = { connection: 'connecting', chunksDone: 0, computeMs: 0 };
    /** Figures of Web Workers this slot had before a crash, so totals never go back. */
    this.carried = { chunksDone: 0, computeMs: 0 };
    this.restarts = 0;
    this.restartTimer = null;
    this.spawn();
  }

  spawn() {
    this.worker = new Worker(new URL('./worker.js', import.meta.url), {
      type: 'module',
      name: `grid-thread-${this.index}`,
    });
    this.worker.addEventListener('message', (event) => this.onMessage(event.data));
    this.worker.addEventListener('error', (event) => {
      event.preventDefault();
      this.crashed(event.message || 'the worker thread failed');
    });
    this.worker.addEventListener('messageerror', () => this.crashed('unreadable message'));
  }

  onMessage(message) {
    if (message?.type === 'status' && message.status) {
      const previous = this.status.chunksDone ?? 0;
      this.status = message.status;
      const now = performance.now();
      for (let i = previous; i < (this.status.chunksDone ?? 0); i++) this.page.finished.push(now);
      if (this.status.connection === 'connected') this.restarts = 0;
      this.page.render();
    } else if (message?.type === 'fatal') {
      this.crashed(message.message);
    }
  }

  /** A panic (wasm aborts) or a failed start: replace the Web Worker after a growing pause. */
  crashed(reason) {
    this.carried.chunksDone += this.status.chunksDone ?? 0;
    this.carried.computeMs += this.status.computeMs ?? 0;
    this.status = { connection: 'reconnecting', chunksDone: 0, computeMs: 0, lastError: reason };
    this.worker.terminate();
    this.restarts += 1;
    const delay = Math.min(30_000, 500 * 2 ** Math.min(this.restarts, 6)) * Math.random();
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (!this.page.running) return;
      this.spawn();
      this.send({ type: 'start', ...this.page.startOptions() });
    }, delay);
    this.page.render();
  }

  send(message) {
    this.worker.postMessage(message);
  }

  get chunksDone() {
    return this.carried.chunksDone + (this.status.chunksDone ?? 0);
  }

  get computeMs() {
    return this.carried.computeMs + (this.status.computeMs ?? 0);
  }

  /** Give back queued work, close the socket and end the Web Worker. */
  stop() {
    clearTimeout(this.restartTimer);
    this.send({ type: 'stop' });
  }
}

class Page {
  constructor() {
    const identity = volunteerId();
    this.workerId = identity.id;
    this.idPersistent = identity.persistent;
    this.threads = clampInt(stored(THREADS_KEY), 1, MAX_THREADS, defaultThreads());
    this.cpuPercent = clampInt(stored(CPU_KEY), 10, 100, 100);
    this.running = false;
    this.started = false;
    this.slots = [];
    /** Figures of threads removed while running. */
    this.retired = { chunksDone: 0, computeMs: 0 };
    /** performance.now() of each finished chunk within the rate window. */
    this.finished = [];

    $('volunteer-id').textContent = this.workerId;
    if (!this.idPersistent) {
      $('volunteer-id').title = 'localStorage is unavailable: this identity lasts until the page is closed';
    }
    $('threads').value = String(this.threads);
    $('threads').max = String(MAX_THREADS);
    $('cpu').value = String(this.cpuPercent);
    $('cpu-value').textContent = `${this.cpuPercent}%`;

    $('toggle').addEventListener('click', () => (this.running ? this.pause() : this.start()));
    $('threads').addEventListener('change', () => this.setThreads($('threads').value));
    $('cpu').addEventListener('input', () => this.setCpu($('cpu').value));
    document.addEventListener('visibilitychange', () => this.onVisibility());
    // Page Lifecycle: a frozen tab computes nothing, so give the work back before freezing
    // (best effort: the leases' deadlines cover the rest) and carry on when resumed.
    document.addEventListener('freeze', () => {
      if (this.running) {
        this.resumeAfterFreeze = true;
        this.pause();
      }
    });
    document.addEventListener('resume', () => {
      if (this.resumeAfterFreeze) {
        this.resumeAfterFreeze = false;
        this.start();
      }
    });
    setInterval(() => this.render(), 1000);
    this.onVisibility();
    this.render();
  }

  startOptions() {
    return { url: masterUrl(), workerId: this.workerId, cpuPercent: this.cpuPercent };
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.started = true;
    while (this.slots.length < this.threads) this.slots.push(new Slot(this.slots.length, this));
    for (const slot of this.slots) slot.send({ type: 'start', ...this.startOptions() });
    this.render();
  }

  pause() {
    if (!this.running) return;
    this.running = false;
    for (const slot of this.slots) {
      slot.send({ type: 'pause' });
      slot.status = { ...slot.status, connection: 'paused' };
    }
    this.render();
  }

  setThreads(value) {
    this.threads = clampInt(value, 1, MAX_THREADS, this.threads);
    $('threads').value = String(this.threads);
    store(THREADS_KEY, String(this.threads));
    while (this.slots.length > this.threads) {
      const slot = this.slots.pop();
      this.retired.chunksDone += slot.chunksDone;
      this.retired.computeMs += slot.computeMs;
      slot.stop();
    }
    if (this.running) {
      while (this.slots.length < this.threads) {
        const slot = new Slot(this.slots.length, this);
        this.slots.push(slot);
        slot.send({ type: 'start', ...this.startOptions() });
      }
    }
    this.render();
  }

  setCpu(value) {
    this.cpuPercent = clampInt(value, 10, 100, this.cpuPercent);
    $('cpu-value').textContent = `${this.cpuPercent}%`;
    store(CPU_KEY, String(this.cpuPercent));
    for (const slot of this.slots) slot.send({ type: 'cpu', percent: this.cpuPercent });
  }

  onVisibility() {
    const hidden = document.visibilityState === 'hidden';
    const note = $('visibility');
    note.dataset.visibility = hidden ? 'hidden' : 'visible';
    note.textContent = hidden
      ? 'This tab is hidden: the browser may slow it down or freeze it. Work it holds is ' +
        'handed to other volunteers when its deadline passes; nothing is lost.'
      : 'This tab is visible.';
    if (hidden) this.hiddenSince = Date.now();
  }

  state() {
    if (!this.started) return 'stopped';
    if (!this.running) return 'paused';
    const connections = this.slots.map((slot) => slot.status.connection);
    if (connections.includes('connected')) {
      const recent = this.finished.length > 0 &&
        performance.now() - this.finished[this.finished.length - 1] < COMPUTING_WINDOW_MS;
      return recent ? 'computing' : 'connected';
    }
    if (connections.includes('reconnecting')) return 'reconnecting';
    if (connections.length > 0 && connections.every((c) => c === 'failed')) return 'failed';
    return 'connecting';
  }

  render() {
    const now = performance.now();
    while (this.finished.length > 0 && now - this.finished[0] > RATE_WINDOW_MS) this.finished.shift();
    let chunks = this.retired.chunksDone;
    let computeMs = this.retired.computeMs;
    let connected = 0;
    let lastError = null;
    for (const slot of this.slots) {
      chunks += slot.chunksDone;
      computeMs += slot.computeMs;
      if (slot.status.connection === 'connected') connected += 1;
      if (slot.status.lastError && slot.status.connection !== 'connected') lastError = slot.status.lastError;
    }
    const state = this.state();
    const stateEl = $('state');
    stateEl.textContent = state;
    stateEl.dataset.state = state;
    $('chunks-done').textContent = String(chunks);
    const perMinute = (this.finished.length * 60_000) / RATE_WINDOW_MS;
    $('rate').textContent = `${perMinute < 10 ? perMinute.toFixed(1) : Math.round(perMinute)} / min`;
    $('time-contributed').textContent = formatDuration(computeMs);
    $('connections').textContent = `${connected} / ${this.running ? this.slots.length : 0}`;

    const toggle = $('toggle');
    toggle.textContent = this.running ? 'Pause' : this.started ? 'Resume' : 'Start';
    toggle.dataset.action = this.running ? 'pause' : 'start';

    const details = {
      stopped: 'Press Start to contribute.',
      paused: 'Paused: nothing is computed and no work is held.',
      connecting: 'Connecting to the grid…',
      connected: 'Connected; waiting for work.',
      computing: `Computing on ${this.slots.length} thread${this.slots.length === 1 ? '' : 's'}.`,
      reconnecting: 'Connection lost; retrying with increasing pauses.',
      failed: 'The grid refused this page (it may be out of date): reload it.',
    };
    $('state-detail').textContent = details[state];
    const error = $('last-error');
    error.hidden = !lastError || state === 'computing';
    error.textContent = lastError ? `Last problem: ${lastError}` : '';
  }
}

const page = new Page();
if (new URLSearchParams(location.search).get('autostart') === '1') {
  page.start();
}
