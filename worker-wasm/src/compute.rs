//! Kernel chunks, the result frame sent to the master, and [`KernelBench`], the benchmark's
//! timing harness.
//!
//! The kernels live in `grid-kernels`; this module only turns their answer into an
//! [`Outcome`]. Task-module chunks are not computed here but asynchronously in a sandbox
//! ([`crate::task_module`], [`crate::module_runner`]); their outcomes go through
//! [`result_frame`] all the same. The rules must match the native worker's (`grid-worker`)
//! exactly, because the master compares outcomes byte for byte across workers:
//! - a kernel error becomes `Outcome::Err(<the error's Display>)`;
//! - a result frame larger than the welcome's `max_message_bytes` is replaced by
//!   `Outcome::Err("output too large: the master accepts results of at most N bytes")`.
//!
//! A panicking kernel cannot be caught on `wasm32-unknown-unknown` (panics abort): the Web
//! Worker dies and the page starts a new one; the master reissues the lease when the socket
//! drops.

use grid_protocol::{LeaseId, Outcome};
use wasm_bindgen::prelude::*;

/// Compute one chunk of the built-in kernel `name`.
pub fn run_kernel(name: &str, input: &serde_json::Value) -> Outcome {
    match grid_kernels::run(name, input) {
        Ok(output) => Outcome::Ok(output),
        Err(error) => Outcome::Err(error.to_string()),
    }
}

/// The result frame to send for `outcome`, kept within `max_message_bytes` (see the module
/// documentation).
pub fn result_frame(lease: LeaseId, outcome: Outcome, max_message_bytes: Option<usize>) -> String {
    grid_protocol::result_frame(lease, outcome, max_message_bytes).0
}

/// One kernel on one input, for timing: the input is parsed once, [`KernelBench::run`] does
/// nothing but `grid_kernels::run`. The benchmark runs this same code in Chromium and natively.
#[wasm_bindgen]
#[derive(Debug)]
pub struct KernelBench {
    /// Kernel name.
    kernel: String,
    /// The parsed input.
    input: serde_json::Value,
    /// The last run's outcome.
    last: Option<Outcome>,
}

impl KernelBench {
    /// Parse `input_json` for `kernel`; errors if it is not JSON or not a valid input.
    pub fn parse(kernel: &str, input_json: &str) -> Result<KernelBench, String> {
        let input: serde_json::Value =
            serde_json::from_str(input_json).map_err(|error| error.to_string())?;
        grid_kernels::validate(kernel, &input).map_err(|error| error.to_string())?;
        Ok(KernelBench {
            kernel: kernel.to_owned(),
            input,
            last: None,
        })
    }
}

#[wasm_bindgen]
impl KernelBench {
    /// [`KernelBench::parse`] for JavaScript.
    #[wasm_bindgen(constructor)]
    pub fn new(kernel: &str, input_json: &str) -> Result<KernelBench, JsError> {
        KernelBench::parse(kernel, input_json).map_err(|error| JsError::new(&error))
    }

    /// Run the kernel once.
    pub fn run(&mut self) {
        self.last = Some(run_kernel(&self.kernel, &self.input));
    }

    /// Hex SHA-256 of the last outcome as the master would compute it (empty before a run):
    /// equal digests on both platforms mean bit-identical outputs.
    pub fn outcome_digest(&self) -> String {
        self.last
            .as_ref()
            .map(|outcome| grid_protocol::digest_hex(&grid_protocol::outcome_digest(outcome)))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use grid_protocol::WorkerMessage;
    use serde_json::json;

    /// The result frame of lease 9 computing `kernel` on `input`.
    fn kernel_frame(
        kernel: &str,
        input: serde_json::Value,
        max_message_bytes: Option<usize>,
    ) -> String {
        result_frame(9, run_kernel(kernel, &input), max_message_bytes)
    }

    #[test]
    fn outputs_and_kernel_errors_become_results() {
        let frame = kernel_frame("primes", json!({"start": 0, "end": 100}), None);
        assert_eq!(
            frame,
            r#"{"type":"result","lease":9,"outcome":{"ok":{"count":25}}}"#
        );

        let frame = kernel_frame("nope", json!({}), None);
        assert_eq!(
            WorkerMessage::from_json(&frame).unwrap(),
            WorkerMessage::Result {
                lease: 9,
                outcome: Outcome::Err("unknown kernel `nope`".into()),
            }
        );
    }

    #[test]
    fn oversized_results_become_a_deterministic_error() {
        let big = json!({"text": "x".repeat(500)});
        let frame = kernel_frame("echo", big.clone(), Some(200));
        assert_eq!(
            WorkerMessage::from_json(&frame).unwrap(),
            WorkerMessage::Result {
                lease: 9,
                outcome: Outcome::Err(
                    "output too large: the master accepts results of at most 200 bytes".into()
                ),
            }
        );
        let frame = kernel_frame("echo", big.clone(), Some(10_000));
        assert!(frame.contains(&"x".repeat(500)));
    }

    #[test]
    fn bench_runs_and_digests() {
        let mut bench = KernelBench::parse("primes", r#"{"start": 0, "end": 100}"#).unwrap();
        assert_eq!(bench.outcome_digest(), "");
        bench.run();
        let expected = grid_protocol::outcome_digest(&Outcome::Ok(json!({"count": 25})));
        assert_eq!(bench.outcome_digest(), grid_protocol::digest_hex(&expected));
        assert!(KernelBench::parse("primes", "{").is_err());
        assert!(KernelBench::parse("primes", r#"{"start": 2, "end": 1}"#).is_err());
    }
}
