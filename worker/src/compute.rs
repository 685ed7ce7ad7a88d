//! Running one chunk: [`run_chunk`] turns a [`Program`] and its input into an [`Outcome`].
//!
//! This is plain blocking code; the session runs it on tokio's blocking pool, bounded by a
//! semaphore of `threads` permits and, for module chunks, by the `--max-memory` budget
//! (`ComputeSlots`). What kernels exist and what they compute
//! lives in `grid-kernels`; how a task module runs (wasmtime, limits, failure texts) lives in
//! [`crate::sandbox`], and getting a module ready in [`crate::module_cache`].

use std::any::Any;
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use grid_protocol::Outcome;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sandbox::{ChunkLimits, TaskModule};

/// The worker's compute threads and memory budget: one slot per chunk running, and for a
/// module chunk its `max_memory_mb` out of the `--max-memory` budget, so the caps of the
/// module chunks running at once never add up to more than the budget. Shared by all sessions
/// of one [`crate::run`], so chunks still finishing from a lost connection count against the
/// limits of the next one.
#[derive(Debug, Clone)]
pub(crate) struct ComputeSlots {
    /// One permit per thread.
    threads: Arc<Semaphore>,
    /// One permit per MiB of the budget.
    memory: Arc<Semaphore>,
    /// The budget, in MiB.
    budget_mb: u64,
    /// Modules already logged as over the budget.
    logged_over_budget: Arc<Mutex<HashSet<String>>>,
}

/// What a running chunk holds: its thread and its share of the memory budget, both given back
/// when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The thread.
    _thread: OwnedSemaphorePermit,
    /// The chunk's memory cap out of the budget (no permits for a kernel).
    _memory: OwnedSemaphorePermit,
}

impl ComputeSlots {
    /// `threads` slots and a budget of `budget_mb` MiB for module chunks.
    pub(crate) fn new(threads: u32, budget_mb: u64) -> Self {
        let budget_mb = budget_mb.min(Semaphore::MAX_PERMITS as u64);
        ComputeSlots {
            threads: Arc::new(Semaphore::new(threads as usize)),
            memory: Arc::new(Semaphore::new(budget_mb as usize)),
            budget_mb,
            logged_over_budget: Arc::default(),
        }
    }

    /// The budget, in MiB.
    pub(crate) fn budget_mb(&self) -> u64 {
        self.budget_mb
    }

    /// Whether a chunk needing `memory_mb` can ever start here.
    pub(crate) fn fits(&self, memory_mb: u32) -> bool {
        u64::from(memory_mb) <= self.budget_mb
    }

    /// Whether `module` is over the budget for the first time (to log it once).
    pub(crate) fn first_over_budget(&self, module: &str) -> bool {
        self.logged_over_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(module.to_owned())
    }

    /// A free slot with `memory_mb` MiB of the budget now, if any.
    pub(crate) fn try_take(&self, memory_mb: u32) -> Option<Slot> {
        let thread = Arc::clone(&self.threads).try_acquire_owned().ok()?;
        let memory = Arc::clone(&self.memory)
            .try_acquire_many_owned(memory_mb)
            .ok()?;
        Some(Slot {
            _thread: thread,
            _memory: memory,
        })
    }

    /// Wait for a free slot and `memory_mb` MiB of the budget (which must [`fits`]). Cancel
    /// safe: nothing is held if the future is dropped before it completes.
    ///
    /// [`fits`]: ComputeSlots::fits
    pub(crate) async fn take(&self, memory_mb: u32) -> Option<Slot> {
        // The semaphores are never closed, so `None` does not happen in practice.
        let memory = Arc::clone(&self.memory)
            .acquire_many_owned(memory_mb)
            .await
            .ok()?;
        let thread = Arc::clone(&self.threads).acquire_owned().await.ok()?;
        Some(Slot {
            _thread: thread,
            _memory: memory,
        })
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
        let slots = ComputeSlots::new(2, 1024);
        let a = slots.try_take(0);
        let b = slots.try_take(0);
        assert!(a.is_some() && b.is_some());
        assert!(slots.try_take(0).is_none());
        drop(a);
        assert!(slots.take(0).await.is_some());
    }

    #[tokio::test]
    async fn the_memory_budget_limits_module_chunks() {
        let slots = ComputeSlots::new(4, 100);
        assert!(slots.fits(100) && !slots.fits(101));
        let first = slots.try_take(60).unwrap();
        // A thread is free, but not 60 MiB: nothing is taken, not even the thread.
        assert!(slots.try_take(60).is_none());
        let kernels: Vec<_> = (0..3).map(|_| slots.try_take(0).unwrap()).collect();
        assert!(slots.try_take(0).is_none());
        drop(kernels);
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(60).await.is_some() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap());
        assert!(slots.first_over_budget("m") && !slots.first_over_budget("m"));
    }
}
