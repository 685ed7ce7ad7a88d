//! `grid-worker-wasm`: the browser worker of the volunteer compute grid.
//!
//! Built for `wasm32-unknown-unknown` and post-processed by `wasm-bindgen --target web`, it
//! runs in the contribute page's Web Workers (`frontend/src/worker.js`), one
//! [`BrowserWorker`] per thread. It speaks the same protocol as the native `grid-worker`
//! (`grid-protocol`), runs the same kernels (`grid-kernels`) and reports task-module outcomes
//! through the same rules (`grid-task-abi`), so a chunk computed here hashes the same as one
//! computed natively.
//!
//! # Layout
//! - [`browser`]: [`BrowserWorker`], the WebSocket, timers and event handlers (web-sys).
//! - [`session`]: the protocol state machine of one connection, free of browser types.
//! - [`compute`]: kernel chunks and result frames; [`KernelBench`] for the benchmark.
//! - [`task_module`]: task-module chunks without the browser: checks, the module's URL,
//!   verifying and capping its bytes, the sandbox's answer as an outcome.
//! - [`module_runner`]: task-module chunks in the browser: the JavaScript `ModuleHost`
//!   (`frontend/src/modules.js`, with the sandbox Web Worker `frontend/src/sandbox.js`), the
//!   compiled-module cache, one chunk as a future.
//! - [`duty_cycle`]: the CPU-use slider's compute/idle split.
//! - [`status`]: what a worker reports to the page.
//!
//! Everything but [`browser`] and [`module_runner`] is plain Rust and is unit tested natively
//! (`cargo test -p grid-worker-wasm`); the browser parts are exercised end to end in headless
//! Chromium by `server/tests/integration/browser.rs`.

pub mod browser;
pub mod compute;
pub mod duty_cycle;
pub mod module_runner;
pub mod session;
pub mod status;
pub mod task_module;

pub use browser::BrowserWorker;
pub use compute::KernelBench;
