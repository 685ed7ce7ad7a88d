//! `grid-worker-wasm`: the browser worker of the volunteer compute grid.
//!
//! Built for `wasm32-unknown-unknown` and post-processed by `wasm-bindgen --target web`, it
//! runs in the contribute page's Web Workers (`frontend/worker.js`), one [`BrowserWorker`]
//! per thread. It speaks the same protocol as the native `grid-worker` (`grid-protocol`) and
//! runs the same kernels (`grid-kernels`), so a chunk computed here hashes the same as one
//! computed natively.
//!
//! # Layout
//! - [`browser`]: [`BrowserWorker`], the WebSocket, timers and event handlers (web-sys).
//! - [`session`]: the protocol state machine of one connection, free of browser types.
//! - [`compute`]: one assignment to one result frame; [`KernelBench`] for the benchmark.
//! - [`duty_cycle`]: the CPU-use slider's compute/idle split.
//! - [`backoff`]: reconnect delays with jitter.
//! - [`status`]: what a worker reports to the page.
//!
//! Everything but [`browser`] is plain Rust and is unit tested natively (`cargo test -p
//! grid-worker-wasm`); the browser part is exercised end to end in headless Chromium by
//! `server/tests/browser.rs`.

pub mod backoff;
pub mod browser;
pub mod compute;
pub mod duty_cycle;
pub mod session;
pub mod status;

pub use browser::BrowserWorker;
pub use compute::KernelBench;
