// The sandbox: a Web Worker that runs chunks of uploaded task modules, one at a time, for one
// compute thread (modules.js starts it from worker.js). It lives apart from the thread's
// session so that a module that never returns can be stopped the only way a browser can stop
// running WebAssembly: the session side terminate()s this whole Web Worker and starts another.
//
// It runs the task ABI (docs/task-abi.md) and nothing more: instantiate with no imports, write
// the input at grid_alloc(len), call grid_run(ptr, len), copy the output out. It decides no
// outcome: it reports what happened and Rust (worker-wasm/src/task_module.rs) writes the
// outcome with grid-task-abi, so browsers and native workers report the same bytes.
//
// In:  {module: WebAssembly.Module (already capped and compiled), input: Uint8Array}.
// Out: {type: 'ready'} once, then one answer per chunk:
//      {kind: 'output', output: Uint8Array}
//      {kind: 'trap', message, memoryBytes: number | null}
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

function run(module, input) {
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

self.addEventListener('message', (event) => {
  const { module, input } = event.data ?? {};
  let answer;
  if (!(module instanceof WebAssembly.Module) || !(input instanceof Uint8Array)) {
    answer = { kind: 'crashed', reason: 'the sandbox got a malformed request' };
  } else {
    answer = run(module, input);
  }
  // The instance is dropped with this call: every chunk starts from a fresh instance.
  self.postMessage(answer, answer.output ? [answer.output.buffer] : []);
});

self.postMessage({ type: 'ready' });
