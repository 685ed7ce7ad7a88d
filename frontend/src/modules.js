// The JavaScript side of task modules for one compute thread: worker.js gives a ModuleHost to
// its BrowserWorker (Rust, worker-wasm/src/module_runner.rs), which calls it to fetch a
// module's bytes and to run one chunk in the sandbox Web Worker (sandbox.js).
//
// Rust decides everything that matters (the bytes' hash, the ABI check, the memory cap, the
// compiled-module cache, the outcome); this file only does what needs the browser: fetch,
// and the sandbox's life. The sandbox is started lazily and kept between chunks; when a chunk
// passes its wall-clock limit, or the sandbox dies, it is terminated and the next chunk gets a
// fresh one. Nothing a module does can reach this thread, let alone the page.

/**
 * Largest module fetched (as the native worker): well above the master's default upload limit,
 * so a master allowing larger modules still works, while a broken one cannot fill the tab's
 * memory.
 */
const MAX_MODULE_BYTES = 64 * 1024 * 1024;
/** A module that does not arrive within this time is given back to the master. */
const FETCH_TIMEOUT_MS = 60_000;
/** A sandbox that does not start within this time is treated as crashed. */
const SANDBOX_START_TIMEOUT_MS = 30_000;

/** One sandbox Web Worker and the chunk it runs. */
class Sandbox {
  constructor(onGone) {
    this.onGone = onGone;
    this.answer = null;
    this.worker = new Worker(new URL('./sandbox.js', import.meta.url), { name: 'grid-sandbox' });
    this.ready = new Promise((resolve, reject) => {
      this.started = resolve;
      this.failedToStart = reject;
    });
    const startTimer = setTimeout(
      () => this.die(`the sandbox did not start within ${SANDBOX_START_TIMEOUT_MS / 1000} s`),
      SANDBOX_START_TIMEOUT_MS,
    );
    this.ready.then(() => clearTimeout(startTimer), () => clearTimeout(startTimer));
    this.worker.addEventListener('message', (event) => {
      if (event.data?.type === 'ready') {
        this.started();
      } else {
        this.answer?.(event.data);
      }
    });
    // An uncaught error in the sandbox: handled here, so it never reaches the page.
    this.worker.addEventListener('error', (event) => {
      event.preventDefault();
      this.die(event.message || 'the sandbox failed');
    });
    this.worker.addEventListener('messageerror', () => this.die('an unreadable message from the sandbox'));
  }

  /** Stop it for good; a waiting chunk gets `crashed`. */
  die(reason) {
    this.terminate();
    this.failedToStart(new Error(reason));
    this.answer?.({ kind: 'crashed', reason });
  }

  terminate() {
    this.worker.terminate();
    this.onGone(this);
  }
}

export class ModuleHost {
  constructor() {
    /** The sandbox, started on the first chunk and replaced after a timeout or a crash. */
    this.sandbox = null;
    /** Ends the running chunk with an answer: `(answer) => void`, or null. */
    this.settle = null;
  }

  /**
   * The module's bytes. `WebAssembly.compileStreaming(response)` would compile while
   * downloading, but Rust must check the bytes against their id and write the memory cap into
   * them before anything compiles them.
   */
  async fetchModule(url) {
    const response = await fetch(url, {
      credentials: 'omit',
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status} from ${url}`);
    const tooLarge = new Error(`the module is larger than ${MAX_MODULE_BYTES} bytes`);
    if (Number(response.headers.get('content-length')) > MAX_MODULE_BYTES) throw tooLarge;
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (bytes.length > MAX_MODULE_BYTES) throw tooLarge;
    return bytes;
  }

  /**
   * Run one chunk: `input` (UTF-8 JSON) through the compiled `module`, at most `timeoutMs`.
   * `wasi` is null for a raw module, `{seed}` for a WASI command module (sandbox.js).
   */
  run(module, input, timeoutMs, wasi = null) {
    this.cancel();
    return new Promise((resolve) => {
      const sandbox = (this.sandbox ??= new Sandbox((gone) => {
        if (this.sandbox === gone) this.sandbox = null;
      }));
      let timer = null;
      const settle = (answer, { keepSandbox = true } = {}) => {
        if (this.settle !== settle) return;
        this.settle = null;
        clearTimeout(timer);
        sandbox.answer = null;
        if (!keepSandbox) sandbox.terminate();
        resolve(answer);
      };
      this.settle = settle;
      sandbox.ready.then(
        () => {
          if (this.settle !== settle) return;
          // A sandbox that answered oddly is not trusted with the next chunk.
          sandbox.answer = (answer) => settle(answer, { keepSandbox: answer?.kind !== 'crashed' });
          try {
            sandbox.worker.postMessage({ module, input, wasi }, [input.buffer]);
          } catch (error) {
            settle({ kind: 'crashed', reason: `cannot hand the chunk to the sandbox: ${error}` }, { keepSandbox: false });
            return;
          }
          // The limit starts once the chunk is handed over: a sandbox starting up is not the
          // module's time. Terminating is the only way to stop WebAssembly that loops.
          timer = setTimeout(() => settle({ kind: 'timeout' }, { keepSandbox: false }), timeoutMs);
        },
        (error) => settle({ kind: 'crashed', reason: String(error?.message ?? error) }, { keepSandbox: false }),
      );
    });
  }

  /** Stop the running chunk, if any: it answers `cancelled` and its sandbox is replaced. */
  cancel() {
    this.settle?.({ kind: 'cancelled' }, { keepSandbox: false });
  }
}
