//! Task-module chunks in the browser: everything about them that needs no browser.
//!
//! A module chunk goes through these steps; the browser plumbing is in
//! [`crate::module_runner`], the JavaScript side in `frontend/src/modules.js` (fetching, the
//! sandbox Web Worker and its wall-clock limit) and `frontend/src/sandbox.js` (running the
//! ABI):
//! 1. [`ModuleTask::new`]: the task the master sent, checked ([`Unrunnable`] if no worker
//!    could run it).
//! 2. [`grid_task_abi::module_url`]: where the master serves the module's bytes.
//! 3. [`prepare`]: the fetched bytes must hash to the module's id; then the ABI check, the
//!    memory cap's start-up check on memory and tables together (a deterministic failure, the
//!    chunk's outcome, with the native worker's text), and a copy of the module whose declared
//!    maxima follow the cap: the memory's is what the tables leave of it, each table's its
//!    initial size (the browser cannot limit a memory or a table the module defines; see
//!    `grid_task_abi::memory`).
//! 4. [`SandboxAnswer::end`]: what the sandbox said becomes the chunk's [`Outcome`], written
//!    by `grid-task-abi` only, so it equals the native worker's byte for byte, or the lease is
//!    given back ([`ChunkEnd::GiveBack`]) when the answer says nothing about the module itself
//!    (the sandbox died, the chunk was cancelled).

use grid_protocol::{Outcome, OutputMode};
use grid_task_abi::memory::cap_declared_maximum;
use grid_task_abi::outcome::{in_bounds, output_outcome};
use grid_task_abi::wasi::ProgramEnd;
use grid_task_abi::{
    Failure, MemoryLimit, ModuleInfo, TrapKind, check_module, is_module_id, limits, module_id,
};

/// Why this worker gives a chunk back instead of computing it: nothing here says anything
/// about the module's behaviour, so it must not become an outcome (another worker may well
/// compute it). The text is for the console and the page's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrunnable(pub String);

impl std::fmt::Display for Unrunnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A module chunk's task, as the master sent it and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleTask {
    /// The module's content address, `sha256:<hex>`.
    pub id: String,
    /// Wall-clock limit of one chunk.
    pub timeout_ms: u32,
    /// The memory cap.
    pub limit: MemoryLimit,
    /// How the output bytes become the output value.
    pub output: OutputMode,
}

impl ModuleTask {
    /// Check what the master sent: a well-formed id (it goes into a URL) and limits within the
    /// ceilings every master enforces at submission (a cap beyond them would not even compile
    /// in a browser).
    pub fn new(id: &str, timeout_ms: u32, max_memory_mb: u32) -> Result<ModuleTask, Unrunnable> {
        if !is_module_id(id) {
            return Err(Unrunnable(format!(
                "the master named a malformed module id {id:?}"
            )));
        }
        if !(limits::MIN_TIMEOUT_MS..=limits::MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(Unrunnable(format!(
                "module {id}: timeout_ms {timeout_ms} is outside {}..={}",
                limits::MIN_TIMEOUT_MS,
                limits::MAX_TIMEOUT_MS
            )));
        }
        if !(limits::MIN_MAX_MEMORY_MB..=limits::MAX_MAX_MEMORY_MB).contains(&max_memory_mb) {
            return Err(Unrunnable(format!(
                "module {id}: max_memory_mb {max_memory_mb} is outside {}..={}",
                limits::MIN_MAX_MEMORY_MB,
                limits::MAX_MAX_MEMORY_MB
            )));
        }
        Ok(ModuleTask {
            id: id.to_owned(),
            timeout_ms,
            limit: MemoryLimit::new(max_memory_mb),
            output: OutputMode::Json,
        })
    }

    /// The same task with its output read as `output` says.
    pub fn with_output(self, output: OutputMode) -> ModuleTask {
        ModuleTask { output, ..self }
    }
}

/// A fetched module, ready for the sandbox or known to fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Compile and run `capped`: the module with its declared maximum lowered to the cap.
    Ready {
        /// The module to compile.
        capped: Vec<u8>,
        /// What the ABI check learned about it.
        info: ModuleInfo,
    },
    /// Every chunk of this module under this cap fails so, without running.
    FailsAtStart(Failure),
}

/// Verify and prepare the bytes fetched for `task` (see the module documentation).
pub fn prepare(task: &ModuleTask, bytes: &[u8]) -> Result<Prepared, Unrunnable> {
    let actual = module_id(bytes);
    if actual != task.id {
        return Err(Unrunnable(format!(
            "the bytes fetched for module {} hash to {actual}",
            task.id
        )));
    }
    // The master accepted this module with the same check at upload, so a refusal here means
    // the master and this page disagree about the ABI (different versions): not the module's
    // behaviour, so not an outcome.
    let info =
        check_module(bytes).map_err(|error| Unrunnable(format!("module {}: {error}", task.id)))?;
    if let Err(failure) = task.limit.check_start(&info) {
        return Ok(Prepared::FailsAtStart(failure));
    }
    let capped = cap_declared_maximum(bytes, task.limit)
        .map_err(|error| Unrunnable(format!("module {}: {error}", task.id)))?;
    Ok(Prepared::Ready { capped, info })
}

/// How a module chunk ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkEnd {
    /// Send this outcome.
    Outcome(Outcome),
    /// Give the lease back, for this reason.
    GiveBack(Unrunnable),
}

impl From<Failure> for ChunkEnd {
    fn from(failure: Failure) -> ChunkEnd {
        ChunkEnd::Outcome(failure.into())
    }
}

/// What the sandbox (or the JavaScript that watches it) answered for one chunk. The names of
/// the `kind`s JavaScript uses are in [`crate::module_runner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxAnswer {
    /// `grid_run` returned these bytes (in bounds).
    Output(Vec<u8>),
    /// The module trapped: the engine's message and the memory size then (`None` when the
    /// trap happened while instantiating, where the memory cannot be reached).
    Trap {
        /// `WebAssembly.RuntimeError` (or stack `RangeError`) message.
        message: String,
        /// `memory.buffer.byteLength` after the trap.
        memory_bytes: Option<u64>,
        /// What a WASI program had written to standard error (as kept by the shim).
        stderr: Vec<u8>,
    },
    /// A WASI program ended (`_start` returned: code 0, or `proc_exit(code)`).
    Exited {
        /// Its exit code.
        code: u32,
        /// Its standard output.
        stdout: Vec<u8>,
        /// Its standard error, as kept.
        stderr: Vec<u8>,
    },
    /// A WASI program wrote more than `grid_task_abi::wasi::STDOUT_LIMIT_BYTES` to standard
    /// output.
    StdoutTooLarge {
        /// Its standard error, as kept.
        stderr: Vec<u8>,
    },
    /// `grid_alloc(len)` returned `ptr`, outside the memory.
    AllocOutOfBounds {
        /// Returned pointer.
        ptr: u32,
        /// The input's length.
        len: u32,
        /// Memory size.
        memory_bytes: u64,
    },
    /// `grid_run` returned a range outside the memory.
    OutputOutOfBounds {
        /// Returned pointer.
        ptr: u32,
        /// Returned length.
        len: u32,
        /// Memory size.
        memory_bytes: u64,
    },
    /// The wall-clock limit passed; the sandbox was terminated.
    TimedOut,
    /// The sandbox failed for a reason that is not the module's trap (it could not start,
    /// died, or the engine ran out of resources).
    Crashed(String),
    /// The chunk was cancelled (revoked or paused) before it ended.
    Cancelled,
}

impl SandboxAnswer {
    /// The chunk's end, for a module of `info` run as `task`.
    pub fn end(self, task: &ModuleTask, info: &ModuleInfo) -> ChunkEnd {
        match self {
            SandboxAnswer::Output(bytes) => ChunkEnd::Outcome(output_outcome(&bytes, task.output)),
            // A raw module writes no standard error, so `stderr` is empty and changes nothing.
            SandboxAnswer::Trap {
                message,
                memory_bytes,
                stderr,
            } => ChunkEnd::Outcome(
                ProgramEnd::Failed(Failure::Trap {
                    kind: TrapKind::from_browser_message(&message),
                    memory_bytes: memory_bytes.unwrap_or_else(|| info.initial_bytes()),
                    limit: task.limit,
                })
                .outcome(&[], &stderr, task.output),
            ),
            SandboxAnswer::Exited {
                code,
                stdout,
                stderr,
            } => ChunkEnd::Outcome(ProgramEnd::Exited(code).outcome(&stdout, &stderr, task.output)),
            SandboxAnswer::StdoutTooLarge { stderr } => {
                ChunkEnd::Outcome(ProgramEnd::StdoutTooLarge.outcome(&[], &stderr, task.output))
            }
            // The sandbox checks bounds; checking again here keeps a confused sandbox from
            // turning a good run into a failure.
            SandboxAnswer::AllocOutOfBounds {
                ptr,
                len,
                memory_bytes,
            } if !in_bounds(ptr, len, memory_bytes) => Failure::AllocOutOfBounds {
                ptr,
                len,
                memory_bytes,
            }
            .into(),
            SandboxAnswer::OutputOutOfBounds {
                ptr,
                len,
                memory_bytes,
            } if !in_bounds(ptr, len, memory_bytes) => Failure::OutputOutOfBounds {
                ptr,
                len,
                memory_bytes,
            }
            .into(),
            SandboxAnswer::AllocOutOfBounds { ptr, len, .. }
            | SandboxAnswer::OutputOutOfBounds { ptr, len, .. } => {
                ChunkEnd::GiveBack(Unrunnable(format!(
                    "the sandbox reported {len} bytes at {ptr} out of bounds, but they are not"
                )))
            }
            SandboxAnswer::TimedOut => Failure::Timeout {
                timeout_ms: task.timeout_ms,
            }
            .into(),
            SandboxAnswer::Crashed(why) => ChunkEnd::GiveBack(Unrunnable(format!(
                "the sandbox running module {} failed: {why}",
                task.id
            ))),
            SandboxAnswer::Cancelled => {
                ChunkEnd::GiveBack(Unrunnable("the chunk was cancelled".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// A module following the ABI, with `memory` as its memory declaration.
    fn module(memory: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 (memory (export "memory") {memory})
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 1024)
                 (func (export "grid_run") (param i32 i32) (result i64)
                   (i64.or (i64.shl (i64.extend_i32_u (local.get 0)) (i64.const 32))
                           (i64.extend_i32_u (local.get 1)))))"#
        ))
        .unwrap()
    }

    fn task_for(bytes: &[u8], max_memory_mb: u32) -> ModuleTask {
        ModuleTask::new(&module_id(bytes), 250, max_memory_mb).unwrap()
    }

    #[test]
    fn tasks_are_checked_before_anything_is_fetched() {
        let id = module_id(b"x");
        assert!(ModuleTask::new(&id, 250, 64).is_ok());
        for (id, timeout_ms, mb) in [
            ("sha256:../../admin", 250, 64),
            ("primes", 250, 64),
            (id.as_str(), 0, 64),
            (id.as_str(), limits::MAX_TIMEOUT_MS + 1, 64),
            (id.as_str(), 250, 0),
            (id.as_str(), 250, limits::MAX_MAX_MEMORY_MB + 1),
        ] {
            assert!(
                ModuleTask::new(id, timeout_ms, mb).is_err(),
                "{id} {timeout_ms} {mb}"
            );
        }
    }

    #[test]
    fn fetched_bytes_must_hash_to_the_id() {
        let bytes = module("1");
        let task = task_for(&bytes, 2);
        let mut tampered = bytes.clone();
        tampered.extend_from_slice(b"\0\x01x");
        let Err(why) = prepare(&task, &tampered) else {
            panic!("tampered bytes accepted");
        };
        assert!(why.0.contains("hash to sha256:"), "{why}");
    }

    #[test]
    fn prepared_modules_carry_the_cap() {
        let bytes = module("1");
        let Prepared::Ready { capped, info } = prepare(&task_for(&bytes, 2), &bytes).unwrap()
        else {
            panic!("not ready");
        };
        assert_eq!(info.initial_pages, 1);
        assert_eq!(check_module(&capped).unwrap().maximum_pages, Some(32));
    }

    #[test]
    fn a_module_over_the_cap_at_start_fails_without_running() {
        let bytes = module("40");
        let prepared = prepare(&task_for(&bytes, 2), &bytes).unwrap();
        assert_eq!(
            prepared,
            Prepared::FailsAtStart(Failure::MemoryAtStart {
                memory_bytes: 40 * 65_536,
                table_bytes: 0,
                limit: MemoryLimit::new(2),
            })
        );
    }

    /// `module("1")` with `tables` and `body` as `grid_run`.
    fn with_tables(tables: &str, body: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 (memory (export "memory") 1)
                 {tables}
                 (func $f) (elem declare func $f)
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 1024)
                 (func (export "grid_run") (param i32 i32) (result i64) {body}))"#
        ))
        .unwrap()
    }

    #[test]
    fn a_table_bomb_fails_at_start_with_the_native_text() {
        // The review's table bomb, with the four tables the ABI allows.
        let tables: String = (0..4)
            .map(|i| format!("(table $t{i} 10000000 funcref)"))
            .collect();
        let fills: String = (0..4)
            .map(|i| format!("(table.fill $t{i} (i32.const 0) (ref.func $f) (i32.const 10000000))"))
            .collect();
        let bomb = with_tables(&tables, &format!("{fills} (i64.const 0)"));
        let Prepared::FailsAtStart(failure) = prepare(&task_for(&bomb, 16), &bomb).unwrap() else {
            panic!("the table bomb would run");
        };
        // The same bytes as `grid-worker`'s (worker/tests/integration/modules.rs).
        assert_eq!(
            Outcome::from(failure),
            Outcome::Err(
                "memory limit exceeded: the module needs 306 MiB at start (65536 bytes of \
                 memory, 320000000 bytes of tables); the limit is 16 MiB"
                    .into()
            )
        );
        // Ten tables are refused by the ABI check (as at upload): not an outcome.
        let ten: String = (0..10)
            .map(|i| format!("(table $t{i} 10000000 funcref)"))
            .collect();
        let ten = with_tables(&ten, "(i64.const 0)");
        let Err(why) = prepare(&task_for(&ten, 16), &ten) else {
            panic!("ten tables accepted");
        };
        assert!(why.0.contains("at most 4 are allowed"), "{why}");
    }

    #[test]
    fn tables_cannot_grow_in_the_capped_module() {
        // 1 MiB of funcrefs of a 2 MiB cap: the memory may grow to the other MiB, 16 pages.
        let bytes = with_tables("(table 131072 1000000 funcref)", "(i64.const 0)");
        let Prepared::Ready { capped, info } = prepare(&task_for(&bytes, 2), &bytes).unwrap()
        else {
            panic!("not ready");
        };
        assert_eq!(info.initial_table_bytes, 1 << 20);
        let capped_info = check_module(&capped).unwrap();
        assert_eq!(capped_info.maximum_pages, Some(16));
        let tables: Vec<_> = wasmparser::Parser::new(0)
            .parse_all(&capped)
            .filter_map(|payload| match payload.unwrap() {
                wasmparser::Payload::TableSection(reader) => Some(reader),
                _ => None,
            })
            .flat_map(|reader| reader.into_iter().map(|table| table.unwrap().ty))
            .map(|ty| (ty.initial, ty.maximum))
            .collect();
        assert_eq!(tables, [(131_072, Some(131_072))]);
    }

    #[test]
    fn a_module_breaking_the_abi_is_not_an_outcome() {
        let bytes = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
        assert!(prepare(&task_for(&bytes, 2), &bytes).is_err());
    }

    #[test]
    fn sandbox_answers_become_the_same_outcomes_as_natively() {
        let bytes = module("1");
        let task = task_for(&bytes, 64);
        let info = check_module(&bytes).unwrap();
        let end = |answer: SandboxAnswer| answer.end(&task, &info);
        let err = |text: &str| ChunkEnd::Outcome(Outcome::Err(text.into()));

        assert_eq!(
            end(SandboxAnswer::Output(br#"{"b":2,"a":1}"#.to_vec())),
            ChunkEnd::Outcome(Outcome::Ok(json!({"a": 1, "b": 2})))
        );
        assert_eq!(
            end(SandboxAnswer::Output(b"nope".to_vec())),
            err("bad output: not JSON: expected ident at line 1 column 2")
        );
        assert_eq!(
            end(SandboxAnswer::Trap {
                message: "unreachable".into(),
                memory_bytes: Some(3 << 20),
                stderr: Vec::new(),
            }),
            err("trap: unreachable instruction executed (memory in use: 3 of 64 MiB)")
        );
        // V8's stack overflow is a RangeError.
        assert_eq!(
            end(SandboxAnswer::Trap {
                message: "Maximum call stack size exceeded".into(),
                memory_bytes: None,
                stderr: Vec::new(),
            }),
            err("trap: call stack exhausted (memory in use: 1 of 64 MiB)")
        );
        assert_eq!(
            end(SandboxAnswer::TimedOut),
            err("timeout: the chunk ran longer than 250 ms")
        );
        assert_eq!(
            end(SandboxAnswer::AllocOutOfBounds {
                ptr: 70_000,
                len: 10,
                memory_bytes: 65_536,
            }),
            err("bad input buffer: grid_alloc(10) returned 70000, outside the 65536-byte memory")
        );
        assert_eq!(
            end(SandboxAnswer::OutputOutOfBounds {
                ptr: 65_530,
                len: 10,
                memory_bytes: 65_536,
            }),
            err("bad output: grid_run returned 10 bytes at 65530, outside the 65536-byte memory")
        );
    }

    #[test]
    fn wasi_answers_become_the_same_outcomes_as_natively() {
        let bytes = module("1");
        let task = task_for(&bytes, 64).with_output(OutputMode::Text);
        let info = check_module(&bytes).unwrap();
        let end = |answer: SandboxAnswer| answer.end(&task, &info);
        assert_eq!(
            end(SandboxAnswer::Exited {
                code: 0,
                stdout: b"hello\n".to_vec(),
                stderr: b"warning".to_vec(),
            }),
            ChunkEnd::Outcome(Outcome::Ok(json!("hello\n")))
        );
        assert_eq!(
            end(SandboxAnswer::Exited {
                code: 3,
                stdout: Vec::new(),
                stderr: b"bad input\n".to_vec(),
            }),
            ChunkEnd::Outcome(Outcome::Err(
                "exit: the program exited with code 3; stderr: bad input".into()
            ))
        );
        assert_eq!(
            end(SandboxAnswer::Trap {
                message: "unreachable".into(),
                memory_bytes: Some(2 << 20),
                stderr: b"panicked".to_vec(),
            }),
            ChunkEnd::Outcome(Outcome::Err(
                "trap: unreachable instruction executed (memory in use: 2 of 64 MiB); \
                 stderr: panicked"
                    .into()
            ))
        );
        assert!(matches!(
            end(SandboxAnswer::StdoutTooLarge { stderr: Vec::new() }),
            ChunkEnd::Outcome(Outcome::Err(text)) if text.starts_with("output limit exceeded")
        ));
    }

    #[test]
    fn answers_about_the_sandbox_give_the_chunk_back() {
        let bytes = module("1");
        let task = task_for(&bytes, 64);
        let info = check_module(&bytes).unwrap();
        for answer in [
            SandboxAnswer::Crashed("RangeError: Out of memory".into()),
            SandboxAnswer::Cancelled,
            // A sandbox claiming a range is out of bounds when it is not.
            SandboxAnswer::OutputOutOfBounds {
                ptr: 0,
                len: 10,
                memory_bytes: 65_536,
            },
        ] {
            assert!(
                matches!(answer.clone().end(&task, &info), ChunkEnd::GiveBack(_)),
                "{answer:?}"
            );
        }
    }
}
