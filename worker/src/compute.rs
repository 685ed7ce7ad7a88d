//! Running one chunk: [`run_chunk`] turns a [`Program`] and its input into an [`Outcome`].
//!
//! This is plain blocking code; the session runs it on tokio's blocking pool, bounded by a
//! semaphore of `threads` permits (`ComputeSlots`). What kernels exist and what they compute
//! lives in `grid-kernels`; how a task module runs (wasmtime, limits, failure texts) lives in
//! [`crate::sandbox`], and getting a module ready in [`crate::module_cache`].

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use grid_protocol::Outcome;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sandbox::{ChunkLimits, TaskModule};

/// The worker's compute threads: one permit per chunk running. Shared by all sessions of one
/// [`crate::run`], so chunks still finishing from a lost connection count against the limit
/// of the next one.
#[derive(Debug, Clone)]
pub(crate) struct ComputeSlots(Arc<Semaphore>);

impl ComputeSlots {
    /// `threads` slots.
    pub(crate) fn new(threads: u32) -> Self {
        ComputeSlots(Arc::new(Semaphore::new(threads as usize)))
    }

    /// A free slot now, if any.
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }

    /// Wait for a free slot. Cancel safe.
    pub(crate) async fn take(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed, so `None` does not happen in practice.
        Arc::clone(&self.0).acquire_owned().await.ok()
    }
}

/// What a compute slot runs for an assignment: the session turns a
/// [`Task`](grid_protocol::Task) into one once everything it needs is at hand.
#[derive(Debug, Clone)]
pub enum Program {
    /// A built-in kernel from `grid-kernels`, by name.
    Kernel(String),
    /// An uploaded task module, compiled, with the job's per-chunk limits.
    Module {
        /// The compiled module.
        module: Arc<TaskModule>,
        /// Time and memory limits of one chunk.
        limits: ChunkLimits,
    },
}

/// Compute one chunk.
///
/// Kernel errors become [`Outcome::Err`] with the kernel's message (honest workers fail
/// identically, so errors are compared like outputs); a panicking kernel becomes
/// `Outcome::Err("kernel panicked: ...")` and does not take the worker down. A module's traps,
/// timeouts and bad outputs become the engine-independent texts of
/// [`grid_task_abi::Failure`].
pub fn run_chunk(program: &Program, input: &serde_json::Value) -> Outcome {
    match program {
        Program::Kernel(name) => run_kernel(name, input),
        Program::Module { module, limits } => module.run(input, *limits),
    }
}

fn run_kernel(name: &str, input: &serde_json::Value) -> Outcome {
    match panic::catch_unwind(AssertUnwindSafe(|| grid_kernels::run(name, input))) {
        Ok(Ok(output)) => Outcome::Ok(output),
        Ok(Err(error)) => Outcome::Err(error.to_string()),
        Err(payload) => Outcome::Err(format!("kernel panicked: {}", panic_message(&*payload))),
    }
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_and_errors_become_outcomes() {
        let echo = Program::Kernel("echo".into());
        assert_eq!(
            run_chunk(&echo, &json!({"a": [1, 2]})),
            Outcome::Ok(json!({"a": [1, 2]}))
        );
        match run_chunk(&Program::Kernel("no-such-kernel".into()), &json!(null)) {
            Outcome::Err(message) => assert!(message.contains("no-such-kernel"), "{message}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn panic_payloads_are_readable() {
        let text = panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*text), "boom 1");
        let literal = panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*literal), "static");
        let other = panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(panic_message(&*other), "non-string panic payload");
    }

    #[tokio::test]
    async fn slots_limit_concurrency() {
        let slots = ComputeSlots::new(2);
        let a = slots.try_take();
        let b = slots.try_take();
        assert!(a.is_some() && b.is_some());
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.take().await.is_some());
    }
}
