//! What goes into a module and how what comes out becomes an [`Outcome`].
//!
//! Honest workers must report the same bytes for the same chunk whatever engine they run
//! (wasmtime natively, V8 or another engine in a browser), because the master accepts a chunk
//! only when distinct workers' outcomes hash alike. So an engine's own error text is never
//! passed on: traps are classified into [`TrapKind`]s, and every failure is written by
//! [`Failure`]'s `Display`, here, once.

use grid_protocol::{Outcome, OutputMode};

use crate::memory::MemoryLimit;

/// The input text a module receives: the chunk's input as canonical JSON (keys sorted, no
/// whitespace), UTF-8.
pub fn input_text(input: &serde_json::Value) -> String {
    grid_protocol::canonical_json(input)
}

/// Split `grid_run`'s return value into the output's pointer and length.
pub fn split_result(packed: i64) -> (u32, u32) {
    let bits = packed as u64;
    ((bits >> 32) as u32, bits as u32)
}

/// The outcome of a module that returned `output` (the bytes at the returned pointer, or a
/// WASI program's standard output), read as `mode` says: JSON text, or any UTF-8 text taken
/// as a JSON string.
pub fn output_outcome(output: &[u8], mode: OutputMode) -> Outcome {
    let text = match std::str::from_utf8(output) {
        Ok(text) => text,
        Err(_) => return Failure::OutputNotUtf8.into(),
    };
    match mode {
        OutputMode::Text => Outcome::Ok(serde_json::Value::String(text.to_owned())),
        OutputMode::Json => match serde_json::from_str(text) {
            Ok(value) => Outcome::Ok(value),
            Err(error) => Failure::OutputNotJson(error.to_string()).into(),
        },
    }
}

/// A kind of trap, named the same whatever engine raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// `unreachable` was executed (Rust panics and aborts end here).
    Unreachable,
    /// A load or store outside linear memory.
    MemoryOutOfBounds,
    /// A misaligned atomic access.
    MisalignedAccess,
    /// A table access outside the table.
    TableOutOfBounds,
    /// `call_indirect` to a null entry or one of another signature.
    IndirectCall,
    /// Integer division or remainder by zero.
    IntegerDivideByZero,
    /// Integer overflow (`i32.div_s` of `INT_MIN` by -1).
    IntegerOverflow,
    /// A float that does not fit the integer it is truncated to.
    BadConversionToInteger,
    /// The call stack ran out (runaway recursion).
    StackOverflow,
    /// Anything else the engine raised.
    Other,
}

impl TrapKind {
    /// Classify a browser engine's `WebAssembly.RuntimeError` (or stack `RangeError` /
    /// `InternalError`) message: V8's (Chromium), SpiderMonkey's (Firefox) and
    /// JavaScriptCore's (Safari) wordings. The order matters: the more specific phrases first.
    pub fn from_browser_message(message: &str) -> TrapKind {
        let message = message.to_ascii_lowercase();
        let has = |needle: &str| message.contains(needle);
        if has("unreachable") {
            TrapKind::Unreachable
        } else if has("call stack") || has("too much recursion") {
            TrapKind::StackOverflow
        } else if has("by zero") {
            TrapKind::IntegerDivideByZero
        } else if has("unrepresentable in integer")
            || has("float unrepresentable")
            || has("conversion to integer")
            || has("trunc")
        {
            TrapKind::BadConversionToInteger
        } else if has("divide result unrepresentable") || has("integer overflow") {
            TrapKind::IntegerOverflow
        } else if has("unaligned") || has("misaligned") {
            TrapKind::MisalignedAccess
        } else if has("signature mismatch")
            || has("signature that does not match")
            || has("null function")
            || has("null table entry")
            || has("indirect call")
        {
            TrapKind::IndirectCall
        } else if has("table") || has("element segment") || has("call_indirect") {
            TrapKind::TableOutOfBounds
        } else if has("out of bounds") {
            // SpiderMonkey says "index out of bounds" for tables too; memory is far more common.
            TrapKind::MemoryOutOfBounds
        } else {
            TrapKind::Other
        }
    }

    fn text(self) -> &'static str {
        match self {
            TrapKind::Unreachable => "unreachable instruction executed",
            TrapKind::MemoryOutOfBounds => "out of bounds memory access",
            TrapKind::MisalignedAccess => "misaligned memory access",
            TrapKind::TableOutOfBounds => "out of bounds table access",
            TrapKind::IndirectCall => "indirect call to a null or mismatched function",
            TrapKind::IntegerDivideByZero => "integer divide by zero",
            TrapKind::IntegerOverflow => "integer overflow",
            TrapKind::BadConversionToInteger => "invalid conversion to integer",
            TrapKind::StackOverflow => "call stack exhausted",
            TrapKind::Other => "trap",
        }
    }
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// Bytes as whole MiB, rounded up (the unit failure messages use).
fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Why a module chunk failed. Its `Display` is the error outcome's text, the same on every
/// worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The module trapped; `memory_bytes` is its memory size when it did.
    Trap {
        /// What kind of trap.
        kind: TrapKind,
        /// The module's memory size at the trap.
        memory_bytes: u64,
        /// The job's cap.
        limit: MemoryLimit,
    },
    /// It ran longer than the job's `timeout_ms`.
    Timeout {
        /// The limit.
        timeout_ms: u32,
    },
    /// Its initial memory and tables are over the cap.
    MemoryAtStart {
        /// The initial memory it declares.
        memory_bytes: u64,
        /// What its tables take at start (see [`crate::memory`]).
        table_bytes: u64,
        /// The job's cap.
        limit: MemoryLimit,
    },
    /// The returned output range is not inside memory.
    OutputOutOfBounds {
        /// Returned pointer.
        ptr: u32,
        /// Returned length.
        len: u32,
        /// Memory size.
        memory_bytes: u64,
    },
    /// `grid_alloc` returned a range that is not inside memory.
    AllocOutOfBounds {
        /// Returned pointer.
        ptr: u32,
        /// Requested length.
        len: u32,
        /// Memory size.
        memory_bytes: u64,
    },
    /// The output is not UTF-8.
    OutputNotUtf8,
    /// The output is not JSON; serde_json's message (the same Rust code on every worker).
    OutputNotJson(String),
    /// A WASI program exited with a code other than 0.
    Exit {
        /// Its exit code (`proc_exit`'s argument).
        code: u32,
    },
    /// A WASI program wrote more than `limit` bytes to standard output.
    StdoutTooLarge {
        /// [`crate::wasi::STDOUT_LIMIT_BYTES`].
        limit: usize,
    },
    /// A WASI program's failure and what it wrote to standard error (bounded, see
    /// [`crate::wasi::with_stderr`]).
    WithStderr {
        /// The failure.
        failure: Box<Failure>,
        /// Standard error, as text.
        stderr: String,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap {
                kind,
                memory_bytes,
                limit,
            } => write!(
                f,
                "trap: {kind} (memory in use: {} of {} MiB)",
                mib(*memory_bytes),
                limit.mb
            ),
            Failure::Timeout { timeout_ms } => {
                write!(f, "timeout: the chunk ran longer than {timeout_ms} ms")
            }
            // Memory alone over the cap: the tables are not why, and the text is the one of
            // workers that did not count tables yet.
            Failure::MemoryAtStart {
                memory_bytes,
                table_bytes,
                limit,
            } if *table_bytes == 0 || !limit.allows(*memory_bytes) => write!(
                f,
                "memory limit exceeded: the module needs {} MiB at start; the limit is {} MiB",
                mib(*memory_bytes),
                limit.mb
            ),
            // The tables take it over the cap: both shares.
            Failure::MemoryAtStart {
                memory_bytes,
                table_bytes,
                limit,
            } => write!(
                f,
                "memory limit exceeded: the module needs {} MiB at start ({memory_bytes} bytes \
                 of memory, {table_bytes} bytes of tables); the limit is {} MiB",
                mib(memory_bytes.saturating_add(*table_bytes)),
                limit.mb
            ),
            Failure::OutputOutOfBounds {
                ptr,
                len,
                memory_bytes,
            } => write!(
                f,
                "bad output: grid_run returned {len} bytes at {ptr}, outside the {memory_bytes}-byte memory"
            ),
            Failure::AllocOutOfBounds {
                ptr,
                len,
                memory_bytes,
            } => write!(
                f,
                "bad input buffer: grid_alloc({len}) returned {ptr}, outside the {memory_bytes}-byte memory"
            ),
            Failure::OutputNotUtf8 => f.write_str("bad output: not UTF-8 text"),
            Failure::OutputNotJson(error) => write!(f, "bad output: not JSON: {error}"),
            Failure::Exit { code } => write!(f, "exit: the program exited with code {code}"),
            Failure::StdoutTooLarge { limit } => write!(
                f,
                "output limit exceeded: the program wrote more than {limit} bytes to standard output"
            ),
            Failure::WithStderr { failure, stderr } => write!(f, "{failure}; stderr: {stderr}"),
        }
    }
}

impl From<Failure> for Outcome {
    fn from(failure: Failure) -> Outcome {
        Outcome::Err(failure.to_string())
    }
}

/// Whether `len` bytes at `ptr` fit in a memory of `memory_bytes`.
pub fn in_bounds(ptr: u32, len: u32, memory_bytes: u64) -> bool {
    u64::from(ptr) + u64::from(len) <= memory_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_become_outcomes() {
        let json = OutputMode::Json;
        assert_eq!(
            output_outcome(br#"{"b":1,"a":2}"#, json),
            Outcome::Ok(json!({"a": 2, "b": 1}))
        );
        assert_eq!(
            output_outcome(&[0xff, 0xfe], json),
            Outcome::Err("bad output: not UTF-8 text".into())
        );
        assert_eq!(
            output_outcome(b"{nope", json),
            Outcome::Err("bad output: not JSON: key must be a string at line 1 column 2".into())
        );
        assert_eq!(
            output_outcome(b"{nope", OutputMode::Text),
            Outcome::Ok(json!("{nope"))
        );
        assert_eq!(
            output_outcome(&[0xff], OutputMode::Text),
            Outcome::Err("bad output: not UTF-8 text".into())
        );
    }

    #[test]
    fn packed_results_split() {
        assert_eq!(split_result((1024_i64 << 32) | 7), (1024, 7));
        assert_eq!(split_result(-1), (u32::MAX, u32::MAX));
        assert!(in_bounds(10, 6, 16));
        assert!(!in_bounds(u32::MAX, u32::MAX, 65_536));
    }

    #[test]
    fn browser_traps_are_classified_like_wasmtime_traps() {
        for (message, kind) in [
            ("unreachable", TrapKind::Unreachable),
            ("memory access out of bounds", TrapKind::MemoryOutOfBounds),
            ("divide by zero", TrapKind::IntegerDivideByZero),
            ("remainder by zero", TrapKind::IntegerDivideByZero),
            ("divide result unrepresentable", TrapKind::IntegerOverflow),
            (
                "float unrepresentable in integer range",
                TrapKind::BadConversionToInteger,
            ),
            ("table index is out of bounds", TrapKind::TableOutOfBounds),
            (
                "null function or function signature mismatch",
                TrapKind::IndirectCall,
            ),
            ("Maximum call stack size exceeded", TrapKind::StackOverflow),
            // SpiderMonkey (Firefox).
            ("unreachable executed", TrapKind::Unreachable),
            ("index out of bounds", TrapKind::MemoryOutOfBounds),
            ("integer divide by zero", TrapKind::IntegerDivideByZero),
            ("integer overflow", TrapKind::IntegerOverflow),
            (
                "invalid conversion to integer",
                TrapKind::BadConversionToInteger,
            ),
            ("indirect call to null", TrapKind::IndirectCall),
            ("indirect call signature mismatch", TrapKind::IndirectCall),
            ("too much recursion", TrapKind::StackOverflow),
            ("unaligned memory access", TrapKind::MisalignedAccess),
            // JavaScriptCore (Safari).
            (
                "Unreachable code should not be executed",
                TrapKind::Unreachable,
            ),
            ("Out of bounds memory access", TrapKind::MemoryOutOfBounds),
            ("Division by zero", TrapKind::IntegerDivideByZero),
            (
                "Out of bounds Trunc operation",
                TrapKind::BadConversionToInteger,
            ),
            ("Out of bounds call_indirect", TrapKind::TableOutOfBounds),
            (
                "call_indirect to a null table entry",
                TrapKind::IndirectCall,
            ),
            (
                "call_indirect to a signature that does not match",
                TrapKind::IndirectCall,
            ),
            ("something new", TrapKind::Other),
        ] {
            assert_eq!(TrapKind::from_browser_message(message), kind, "{message}");
        }
    }

    #[test]
    fn failure_texts_are_fixed() {
        let limit = MemoryLimit::new(64);
        let trap = Failure::Trap {
            kind: TrapKind::Unreachable,
            memory_bytes: (33 << 20) - 5,
            limit,
        };
        assert_eq!(
            trap.to_string(),
            "trap: unreachable instruction executed (memory in use: 33 of 64 MiB)"
        );
        let at_start = |memory_mb: u64, table_bytes| Failure::MemoryAtStart {
            memory_bytes: memory_mb << 20,
            table_bytes,
            limit: MemoryLimit::new(2),
        };
        assert_eq!(
            at_start(3, 0).to_string(),
            "memory limit exceeded: the module needs 3 MiB at start; the limit is 2 MiB"
        );
        // The memory alone is over: the tables are not named.
        assert_eq!(
            at_start(3, 80).to_string(),
            "memory limit exceeded: the module needs 3 MiB at start; the limit is 2 MiB"
        );
        // The tables take it over: both shares, and their sum.
        assert_eq!(
            at_start(2, 80).to_string(),
            "memory limit exceeded: the module needs 3 MiB at start (2097152 bytes of memory, \
             80 bytes of tables); the limit is 2 MiB"
        );
        assert_eq!(
            Outcome::from(Failure::Timeout { timeout_ms: 250 }),
            Outcome::Err("timeout: the chunk ran longer than 250 ms".into())
        );
        assert_eq!(
            input_text(&json!({"b": [1], "a": "x"})),
            r#"{"a":"x","b":[1]}"#
        );
    }
}
