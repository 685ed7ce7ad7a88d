//! `grid-kernels`: the deterministic compute kernels of the grid.
//!
//! Every kernel takes one JSON chunk input and produces one JSON output.
//! The crate is pure computation: no threads, no clocks, no randomness, no
//! hash-map iteration and no platform math library (floating point uses only
//! `+ - * /` and comparisons, which IEEE 754 defines exactly). It builds for
//! the host and for `wasm32-unknown-unknown`, and a given input produces a
//! bit-identical output on both.
//!
//! # Layout
//!
//! - [`lib.rs`](crate): kernel registry ([`KERNEL_NAMES`], [`is_known`]) and
//!   dispatch ([`validate`], [`run`]).
//! - [`error`]: [`KernelError`], shared by all kernels.
//! - [`echo`]: returns its input unchanged.
//! - [`primes`]: counts primes in `[start, end)` with a segmented sieve.
//! - [`mandelbrot`]: iteration counts for one tile of a Mandelbrot image.
//! - [`sha256`]: proof-of-work nonce search over `[start, end)`.
//!
//! Each kernel module has typed `Input` / `Output` structs, a
//! `validate(&Input)` limit check, a `compute(&Input) -> Output` and a
//! JSON-level `run`. Its module documentation describes the input and output
//! formats with an example.
//!
//! # Example
//!
//! ```
//! use serde_json::json;
//!
//! let input = json!({"start": 0, "end": 100});
//! grid_kernels::validate("primes", &input).expect("valid");
//! let output = grid_kernels::run("primes", &input).expect("runs");
//! assert_eq!(output, json!({"count": 25}));
//! ```

pub mod echo;
pub mod error;
pub mod mandelbrot;
pub mod primes;
pub mod sha256;

pub use error::KernelError;

/// Names of all kernels, sorted.
pub const KERNEL_NAMES: &[&str] = &["echo", "mandelbrot", "primes", "sha256"];

/// Whether `name` is one of [`KERNEL_NAMES`].
pub fn is_known(name: &str) -> bool {
    KERNEL_NAMES.contains(&name)
}

/// Cheap check done by the master at job submission: the input parses and is
/// within the kernel's limits. Does no computing.
pub fn validate(kernel: &str, input: &serde_json::Value) -> Result<(), KernelError> {
    match kernel {
        "echo" => echo::validate_json(input),
        "mandelbrot" => mandelbrot::validate_json(input),
        "primes" => primes::validate_json(input),
        "sha256" => sha256::validate_json(input),
        other => Err(KernelError::UnknownKernel(other.to_owned())),
    }
}

/// Run a kernel on one chunk input. Validates too.
pub fn run(kernel: &str, input: &serde_json::Value) -> Result<serde_json::Value, KernelError> {
    match kernel {
        "echo" => echo::run(input),
        "mandelbrot" => mandelbrot::run(input),
        "primes" => primes::run(input),
        "sha256" => sha256::run(input),
        other => Err(KernelError::UnknownKernel(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_sorted_and_known() {
        let mut sorted = KERNEL_NAMES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, KERNEL_NAMES);
        for name in KERNEL_NAMES {
            assert!(is_known(name));
        }
        assert!(!is_known("nope"));
        assert!(!is_known(""));
        assert!(!is_known("Primes"));
    }

    #[test]
    fn unknown_kernel_is_rejected() {
        let input = json!({});
        assert_eq!(
            validate("nope", &input),
            Err(KernelError::UnknownKernel("nope".into()))
        );
        assert_eq!(
            run("nope", &input),
            Err(KernelError::UnknownKernel("nope".into()))
        );
        assert_eq!(
            KernelError::UnknownKernel("nope".into()).to_string(),
            "unknown kernel `nope`"
        );
    }

    #[test]
    fn every_kernel_dispatches() {
        let cases = [
            ("echo", json!([1, "two"]), json!([1, "two"])),
            (
                "primes",
                json!({"start": 0, "end": 10}),
                json!({"count": 4}),
            ),
            (
                "sha256",
                json!({"prefix": "grid", "start": 5, "end": 9, "difficulty": 0}),
                json!({
                    "nonce": 5,
                    "hash": crate::sha256::hex_digest(b"grid5"),
                }),
            ),
        ];
        for (kernel, input, expected) in cases {
            assert_eq!(validate(kernel, &input), Ok(()), "{kernel}");
            assert_eq!(run(kernel, &input), Ok(expected), "{kernel}");
        }
        let mandel = json!({
            "width": 4, "height": 4,
            "x_min": -2.0, "x_max": 1.0, "y_min": -1.5, "y_max": 1.5,
            "max_iter": 50,
            "tile": {"x": 0, "y": 0, "w": 4, "h": 4},
        });
        assert_eq!(validate("mandelbrot", &mandel), Ok(()));
        let out = run("mandelbrot", &mandel).expect("runs");
        assert_eq!(out["iterations"].as_array().map(Vec::len), Some(16));
    }

    #[test]
    fn run_validates() {
        let bad = [
            ("primes", json!({"start": 10, "end": 5})),
            ("primes", json!({"start": 1})),
            ("primes", json!("text")),
            (
                "sha256",
                json!({"prefix": "x", "start": 0, "end": 1, "difficulty": 257}),
            ),
            ("mandelbrot", json!({"width": 0})),
        ];
        for (kernel, input) in bad {
            let v = validate(kernel, &input);
            assert!(
                matches!(v, Err(KernelError::InvalidInput(_))),
                "{kernel}: {v:?}"
            );
            assert_eq!(
                run(kernel, &input),
                Err(v.expect_err("invalid")),
                "{kernel}"
            );
        }
    }
}
