// The sandbox: a Web Worker that runs chunks of uploaded task modules, one at a time, for one
// compute thread (modules.js starts it from worker.js). It lives apart from the thread's
// session so that a module that never returns can be stopped the only way a browser can stop
// running WebAssembly: the session side terminate()s this whole Web Worker and starts another.
//
// It runs the task ABIs (docs/task-abi.md) and nothing more:
// - a raw module: instantiate with no imports, write the input at grid_alloc(len), call
//   grid_run(ptr, len), copy the output out;
// - a WASI command module: instantiate with the grid's WASI preview 1 subset (below), the
//   input as standard input, call _start, hand back standard output and error.
// It decides no outcome: it reports what happened and Rust (worker-wasm/src/task_module.rs)
// writes the outcome with grid-task-abi, so browsers and native workers report the same bytes.
//
// In:  {module: WebAssembly.Module (already capped and compiled), input: Uint8Array,
//       wasi: null | {seed: Uint8Array (32 bytes)}}.
// Out: {type: 'ready'} once, then one answer per chunk:
//      {kind: 'output', output: Uint8Array}                          (raw)
//      {kind: 'exit', code, stdout: Uint8Array, stderr: Uint8Array}  (WASI)
//      {kind: 'stdout-too-large', stderr: Uint8Array}                (WASI)
//      {kind: 'trap', message, memoryBytes: number | null, stderr?: Uint8Array}
//      {kind: 'alloc-out-of-bounds' | 'output-out-of-bounds', ptr, len, memoryBytes}
//      {kind: 'crashed', reason}   (not the module's doing, e.g. out of memory at start)

'use strict';

/** Whether `error` is the module's trap (as opposed to the engine running out of something). */
function isTrap(error) {
  if (error instanceof WebAssembly.RuntimeError) return true;
  // Stack exhaustion is a RangeError in V8, an InternalError ("too much recursion") elsewhere.
  return /call stack|too much recursion/i.test(String(error?.message));
}

function failure(error, memory) {
  if (isTrap(error)) {
    // A trap while instantiating (in a start function) leaves no instance to read the memory
    // from: null, and Rust reports the module's initial size.
    return { kind: 'trap', message: String(error.message), memoryBytes: memory ? memory.buffer.byteLength : null };
  }
  return { kind: 'crashed', reason: `${error?.name ?? 'Error'}: ${error?.message ?? error}` };
}

function runRaw(module, input) {
  let instance;
  try {
    instance = new WebAssembly.Instance(module, {});
  } catch (error) {
    return failure(error, null);
  }
  const { memory, grid_alloc: gridAlloc, grid_run: gridRun } = instance.exports;
  try {
    const len = input.length;
    // i32 results arrive as signed numbers; the ABI's pointers and lengths are unsigned.
    const ptr = gridAlloc(len) >>> 0;
    let memoryBytes = memory.buffer.byteLength;
    if (ptr + len > memoryBytes) return { kind: 'alloc-out-of-bounds', ptr, len, memoryBytes };
    new Uint8Array(memory.buffer, ptr, len).set(input);
    const packed = BigInt.asUintN(64, gridRun(ptr, len));
    const outPtr = Number(packed >> 32n);
    const outLen = Number(packed & 0xffffffffn);
    // grid_run may have grown the memory: read its size again.
    memoryBytes = memory.buffer.byteLength;
    if (outPtr + outLen > memoryBytes) {
      return { kind: 'output-out-of-bounds', ptr: outPtr, len: outLen, memoryBytes };
    }
    return { kind: 'output', output: new Uint8Array(memory.buffer, outPtr, outLen).slice() };
  } catch (error) {
    return failure(error, memory);
  }
}

// ---------------------------------------------------------------------------------------------
// WASI preview 1, the grid's subset: the constants and the table of grid_task_abi::wasi
// (task-abi/src/wasi.rs), and every answer as wasmtime-wasi gives it natively
// (worker/src/sandbox/wasi.rs). The browser tests compare both byte for byte.

const WASI_MODULE = 'wasi_snapshot_preview1';
const PROGRAM_NAME = 'task';
const REALTIME_NS = 1_767_225_600_000_000_000n;
const MONOTONIC_NS = 0n;
const RESOLUTION_NS = 1_000n;
const STDOUT_LIMIT_BYTES = 16 << 20;
const STDERR_KEPT_BYTES = 2048;
const ERRNO = { SUCCESS: 0, BADF: 8, INTR: 27, NOSYS: 52, NOTCAPABLE: 76 };
/** `fd_read` and `fd_write` rights, the only ones standard input and output have. */
const RIGHTS_FD_READ = 2n;
const RIGHTS_FD_WRITE = 64n;
/** Every preview 1 function; those not implemented below answer ENOTCAPABLE (files and
 * sockets: `path_*`, `sock_*`) or ENOSYS (the rest). */
const WASI_FUNCTIONS = [
  'args_get', 'args_sizes_get', 'environ_get', 'environ_sizes_get', 'clock_res_get',
  'clock_time_get', 'fd_advise', 'fd_allocate', 'fd_close', 'fd_datasync', 'fd_fdstat_get',
  'fd_fdstat_set_flags', 'fd_fdstat_set_rights', 'fd_filestat_get', 'fd_filestat_set_size',
  'fd_filestat_set_times', 'fd_pread', 'fd_prestat_get', 'fd_prestat_dir_name', 'fd_pwrite',
  'fd_read', 'fd_readdir', 'fd_renumber', 'fd_seek', 'fd_sync', 'fd_tell', 'fd_write',
  'path_create_directory', 'path_filestat_get', 'path_filestat_set_times', 'path_link',
  'path_open', 'path_readlink', 'path_remove_directory', 'path_rename', 'path_symlink',
  'path_unlink_file', 'poll_oneoff', 'proc_exit', 'proc_raise', 'sched_yield', 'random_get',
  'sock_accept', 'sock_recv', 'sock_send', 'sock_shutdown',
];

/** `proc_exit(code)`. */
class ProgramExit {
  constructor(code) {
    this.code = code;
  }
}

/** A write past STDOUT_LIMIT_BYTES. */
class StdoutOverflow {}

/** A pointer argument outside memory or misaligned: wasmtime-wasi traps (no errno). The text
 * is one grid-task-abi classifies as a plain `trap`, as it does wasmtime's host errors. */
class WasiFault extends Error {
  constructor() {
    super('a WASI call was given a bad pointer');
  }
}

/** The ChaCha20 keystream of `key` (RFC 8439 block function, nonce 0, counter from 0), byte
 * after byte: what rand_chacha's ChaCha20Rng gives the native worker. */
class Keystream {
  constructor(key) {
    const words = new DataView(key.buffer, key.byteOffset, 32);
    this.state = new Uint32Array(16);
    this.state.set([0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]);
    for (let i = 0; i < 8; i++) this.state[4 + i] = words.getUint32(4 * i, true);
    this.block = new Uint8Array(64);
    this.used = 64;
  }

  refill() {
    const x = Uint32Array.from(this.state);
    const quarter = (a, b, c, d) => {
      x[a] += x[b]; x[d] = rotl(x[d] ^ x[a], 16);
      x[c] += x[d]; x[b] = rotl(x[b] ^ x[c], 12);
      x[a] += x[b]; x[d] = rotl(x[d] ^ x[a], 8);
      x[c] += x[d]; x[b] = rotl(x[b] ^ x[c], 7);
    };
    for (let round = 0; round < 10; round++) {
      quarter(0, 4, 8, 12); quarter(1, 5, 9, 13); quarter(2, 6, 10, 14); quarter(3, 7, 11, 15);
      quarter(0, 5, 10, 15); quarter(1, 6, 11, 12); quarter(2, 7, 8, 13); quarter(3, 4, 9, 14);
    }
    const out = new DataView(this.block.buffer);
    for (let i = 0; i < 16; i++) out.setUint32(4 * i, (x[i] + this.state[i]) >>> 0, true);
    // The 64-bit block counter (words 12 and 13).
    this.state[12] = (this.state[12] + 1) >>> 0;
    if (this.state[12] === 0) this.state[13] = (this.state[13] + 1) >>> 0;
    this.used = 0;
  }

  fill(bytes) {
    for (let i = 0; i < bytes.length; i++) {
      if (this.used === 64) this.refill();
      bytes[i] = this.block[this.used++];
    }
  }
}

function rotl(value, bits) {
  return ((value << bits) | (value >>> (32 - bits))) >>> 0;
}

/** The imports and state of one WASI run. */
function wasiWorld(input, seed) {
  let memory = null;
  let stdinAt = 0;
  const stdout = [];
  let stdoutBytes = 0;
  const stderr = new Uint8Array(STDERR_KEPT_BYTES);
  let stderrBytes = 0;
  const random = new Keystream(seed);

  const view = () => new DataView(memory.buffer);
  /** Check `[ptr, ptr + len)` is inside memory and `ptr` is aligned to `align`. */
  const region = (ptr, len, align = 1) => {
    if (ptr % align !== 0 || ptr + len > memory.buffer.byteLength) throw new WasiFault();
  };
  const writeU32 = (ptr, value) => {
    region(ptr, 4, 4);
    view().setUint32(ptr, value, true);
  };
  const writeU64 = (ptr, value) => {
    region(ptr, 8, 8);
    view().setBigUint64(ptr, value, true);
  };
  const writeBytes = (ptr, bytes) => {
    region(ptr, bytes.length);
    new Uint8Array(memory.buffer, ptr, bytes.length).set(bytes);
  };
  /** The first non-empty buffer of an (i/ci)ovec array, as wasmtime-wasi takes it. */
  const firstBuffer = (iovs, count) => {
    for (let i = 0; i < count; i++) {
      const at = iovs + 8 * i;
      region(at, 8, 4);
      const buf = view().getUint32(at, true);
      const len = view().getUint32(at + 4, true);
      if (len !== 0) return { buf, len };
    }
    return { buf: 0, len: 0 };
  };
  const argv = new TextEncoder().encode(`${PROGRAM_NAME}\0`);
  // The CPU-time clocks (2, 3) are EBADF; an id that is no clock at all traps, as
  // wasmtime-wasi's argument conversion does.
  const clock = (id, realtime, monotonic) => {
    if (id === 0) return realtime;
    if (id === 1) return monotonic;
    if (id <= 3) return ERRNO.BADF;
    throw new WasiFault();
  };

  const provided = {
    args_sizes_get(argc, size) {
      writeU32(argc >>> 0, 1);
      writeU32(size >>> 0, argv.length);
      return ERRNO.SUCCESS;
    },
    args_get(pointers, buffer) {
      writeU32(pointers >>> 0, buffer >>> 0);
      writeBytes(buffer >>> 0, argv);
      return ERRNO.SUCCESS;
    },
    environ_sizes_get(count, size) {
      writeU32(count >>> 0, 0);
      writeU32(size >>> 0, 0);
      return ERRNO.SUCCESS;
    },
    environ_get() {
      return ERRNO.SUCCESS;
    },
    clock_res_get(id, result) {
      const value = clock(id >>> 0, RESOLUTION_NS, RESOLUTION_NS);
      if (typeof value === 'number') return value;
      writeU64(result >>> 0, value);
      return ERRNO.SUCCESS;
    },
    clock_time_get(id, _precision, result) {
      const value = clock(id >>> 0, REALTIME_NS, MONOTONIC_NS);
      if (typeof value === 'number') return value;
      writeU64(result >>> 0, value);
      return ERRNO.SUCCESS;
    },
    fd_fdstat_get(fd, result) {
      fd >>>= 0;
      if (fd > 2) return ERRNO.BADF;
      const rights = fd === 0 ? RIGHTS_FD_READ : RIGHTS_FD_WRITE;
      region(result >>> 0, 24, 8);
      const at = result >>> 0;
      // Filetype unknown (not a terminal), no flags; padding bytes are left as they are.
      view().setUint8(at, 0);
      view().setUint16(at + 2, 0, true);
      view().setBigUint64(at + 8, rights, true);
      view().setBigUint64(at + 16, rights, true);
      return ERRNO.SUCCESS;
    },
    fd_prestat_get() {
      return ERRNO.BADF;
    },
    fd_prestat_dir_name() {
      return ERRNO.BADF;
    },
    fd_read(fd, iovs, count, result) {
      if (fd >>> 0 !== 0) return ERRNO.BADF;
      const { buf, len } = firstBuffer(iovs >>> 0, count >>> 0);
      const left = input.length - stdinAt;
      // A read of nothing while input is left is EINTR in wasmtime-wasi; at the end, 0.
      if (len === 0 && left > 0) return ERRNO.INTR;
      const n = Math.min(len, left);
      writeBytes(buf, input.subarray(stdinAt, stdinAt + n));
      stdinAt += n;
      writeU32(result >>> 0, n);
      return ERRNO.SUCCESS;
    },
    fd_write(fd, iovs, count, result) {
      fd >>>= 0;
      if (fd !== 1 && fd !== 2) return ERRNO.BADF;
      const { buf, len } = firstBuffer(iovs >>> 0, count >>> 0);
      region(buf, len);
      const bytes = new Uint8Array(memory.buffer, buf, len);
      if (fd === 1) {
        if (stdoutBytes + len > STDOUT_LIMIT_BYTES) throw new StdoutOverflow();
        stdout.push(bytes.slice());
        stdoutBytes += len;
      } else {
        const kept = Math.min(len, STDERR_KEPT_BYTES - stderrBytes);
        stderr.set(bytes.subarray(0, kept), stderrBytes);
        stderrBytes += kept;
      }
      writeU32(result >>> 0, len);
      return ERRNO.SUCCESS;
    },
    proc_exit(code) {
      throw new ProgramExit(code >>> 0);
    },
    sched_yield() {
      return ERRNO.SUCCESS;
    },
    random_get(buf, len) {
      buf >>>= 0;
      len >>>= 0;
      region(buf, len);
      random.fill(new Uint8Array(memory.buffer, buf, len));
      return ERRNO.SUCCESS;
    },
  };
  const imports = {};
  for (const name of WASI_FUNCTIONS) {
    const refused = /^(path|sock)_/.test(name) ? ERRNO.NOTCAPABLE : ERRNO.NOSYS;
    imports[name] = provided[name] ?? (() => refused);
  }
  return {
    imports: { [WASI_MODULE]: imports },
    attach(exported) {
      memory = exported;
    },
    stdout() {
      const all = new Uint8Array(stdoutBytes);
      let at = 0;
      for (const piece of stdout) {
        all.set(piece, at);
        at += piece.length;
      }
      return all;
    },
    stderr: () => stderr.slice(0, stderrBytes),
  };
}

function runWasi(module, input, seed) {
  const world = wasiWorld(input, seed);
  let instance;
  try {
    instance = new WebAssembly.Instance(module, world.imports);
  } catch (error) {
    return failure(error, null);
  }
  const { memory, _start: start } = instance.exports;
  world.attach(memory);
  let code = 0;
  try {
    start();
  } catch (error) {
    if (error instanceof ProgramExit) {
      code = error.code;
    } else if (error instanceof StdoutOverflow) {
      return { kind: 'stdout-too-large', stderr: world.stderr() };
    } else if (error instanceof WasiFault) {
      return { kind: 'trap', message: error.message, memoryBytes: memory.buffer.byteLength, stderr: world.stderr() };
    } else {
      const answer = failure(error, memory);
      if (answer.kind === 'trap') answer.stderr = world.stderr();
      return answer;
    }
  }
  return { kind: 'exit', code, stdout: world.stdout(), stderr: world.stderr() };
}

function transferables(answer) {
  return [answer.output, answer.stdout, answer.stderr].filter(Boolean).map((bytes) => bytes.buffer);
}

self.addEventListener('message', (event) => {
  const { module, input, wasi } = event.data ?? {};
  let answer;
  if (!(module instanceof WebAssembly.Module) || !(input instanceof Uint8Array)) {
    answer = { kind: 'crashed', reason: 'the sandbox got a malformed request' };
  } else if (wasi) {
    if (!(wasi.seed instanceof Uint8Array) || wasi.seed.length !== 32) {
      answer = { kind: 'crashed', reason: 'the sandbox got a malformed WASI request' };
    } else {
      answer = runWasi(module, input, wasi.seed);
    }
  } else {
    answer = runRaw(module, input);
  }
  // The instance is dropped with this call: every chunk starts from a fresh instance.
  self.postMessage(answer, transferables(answer));
});

self.postMessage({ type: 'ready' });
