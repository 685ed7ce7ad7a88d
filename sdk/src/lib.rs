//! `grid-sdk`: write grid task modules in Rust.
//!
//! A task module is a WebAssembly module that follows the grid's task ABI
//! (`docs/task-abi.md`): it exports `memory`, `grid_alloc(len: i32) -> i32` and
//! `grid_run(ptr: i32, len: i32) -> i64`, imports nothing, reads its input as UTF-8 JSON and
//! returns UTF-8 JSON. With this crate a module is one function and one macro call:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     values: Vec<i64>,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     sum: i64,
//! }
//!
//! fn sum(input: Input) -> Output {
//!     Output { sum: input.values.iter().fold(0, |a, b| a.wrapping_add(*b)) }
//! }
//!
//! grid_sdk::task!(sum);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown`
//! (`cargo build --release --target wasm32-unknown-unknown`) and upload the `.wasm`.
//!
//! # What a module answers
//! - `task!(f)` with `f: fn(I) -> O`: the output is `O` as JSON.
//! - `task!(fallible f)` with `f: fn(I) -> Result<O, E>`, `E: Display`: `Ok(o)` is `o` as
//!   JSON; `Err(e)` is the output `{"error": "<e>"}`.
//! - An input that does not deserialize into `I` is the output
//!   `{"error": "invalid input: <serde_json's message>"}`, and an `O` that cannot be written as
//!   JSON (a map with non-string keys) is `{"error": "cannot encode the output: <message>"}`,
//!   in both forms.
//!
//! These error outputs are ordinary outputs: the chunk succeeds, its replicas are compared
//! like any other output, and the submitter reads the message in the job's results. The text
//! is made by the module itself, so every worker reports the same bytes. A panic is different:
//! it aborts the module, which traps, and the chunk fails with the grid's trap message
//! (`trap: unreachable instruction executed ...`); the panic's own message is lost. Return an
//! error rather than panic on bad input.
//!
//! # Layout
//! - [`lib.rs`](crate): this documentation and the [`task!`] macro, which only declares the two
//!   exported functions and forwards to [`abi`].
//! - [`answer`](mod@answer): input bytes → output bytes ([`answer()`], [`answer_fallible`],
//!   [`error_output`]); plain Rust, tested natively.
//! - [`buffers`]: [`Buffers`], the input buffer that lives from `grid_alloc` to `grid_run` and
//!   the output buffer that outlives `grid_run`; tested natively, host side included.
//! - [`abi`]: the instance's one [`Buffers`] and the conversions between wasm32 addresses and
//!   the ABI's `i32`/`i64` values ([`abi::pack`]).

pub mod abi;
pub mod answer;
pub mod buffers;

pub use answer::{answer, answer_fallible, error_output};
pub use buffers::Buffers;

/// Re-exported so a module can name the SDK's serde without its own dependency.
pub use serde;
/// Re-exported so a module can use the SDK's `serde_json` (e.g. `serde_json::Value` inputs).
pub use serde_json;

/// Export a function as the module's task: `task!(f)` for `f: fn(I) -> O`, or
/// `task!(fallible f)` for `f: fn(I) -> Result<O, E>` (see the crate documentation for what
/// each answers). `I: DeserializeOwned`, `O: Serialize`, `E: Display`.
///
/// Expands to the ABI's `grid_alloc` and `grid_run`, exported unmangled. Use it once per
/// module, at any module path (the export names are global).
#[macro_export]
macro_rules! task {
    (fallible $task:path) => {
        $crate::__task_exports!($crate::answer_fallible, $task);
    };
    ($task:path) => {
        $crate::__task_exports!($crate::answer, $task);
    };
}

/// The exports behind [`task!`]; `$answer` is [`answer()`] or [`answer_fallible`].
#[doc(hidden)]
#[macro_export]
macro_rules! __task_exports {
    ($answer:path, $task:path) => {
        /// The task ABI's allocator: the address of a fresh `len`-byte buffer for the input.
        #[unsafe(no_mangle)]
        pub extern "C" fn grid_alloc(len: i32) -> i32 {
            $crate::abi::grid_alloc(len)
        }

        /// The task ABI's entry point: run the task on the `len` bytes at `ptr` (the buffer
        /// `grid_alloc` returned) and return `(output address << 32) | output length`.
        #[unsafe(no_mangle)]
        pub extern "C" fn grid_run(ptr: i32, len: i32) -> i64 {
            $crate::abi::grid_run(ptr, len, |input: &[u8]| $answer(input, $task))
        }
    };
}
