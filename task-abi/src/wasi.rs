//! WASI command modules: the subset of WASI preview 1 the grid gives a program, written once
//! so that the master's upload check, the native worker (wasmtime-wasi) and the browser's
//! shim (`frontend/src/sandbox.js`) agree on every detail (`docs/task-abi.md`, "WASI command
//! modules").
//!
//! - [`FUNCTIONS`]: every `wasi_snapshot_preview1` function with its core type and what the
//!   grid answers ([`Support`]); a module may import only these, with these types.
//! - The fixed world a program sees: [`PROGRAM_NAME`] as its only argument, no environment,
//!   the clocks [`REALTIME_NS`] and [`MONOTONIC_NS`] that never move, and random bytes from
//!   [`random_seed`], the ChaCha20 key of the chunk's random stream.
//! - The bounds on its output ([`STDOUT_LIMIT_BYTES`], [`STDERR_KEPT_BYTES`]) and how a run's
//!   end becomes an outcome ([`ProgramEnd::outcome`]).

use grid_protocol::{Outcome, OutputMode};
use sha2::{Digest, Sha256};
use wasmparser::ValType;

use crate::outcome::{Failure, output_outcome};

/// The only module a WASI command module may import from.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// The export a WASI command module runs: `_start`, `() -> ()`.
pub const START: &str = "_start";

/// `argv[0]`, the program's only argument.
pub const PROGRAM_NAME: &str = "task";

/// `clock_time_get` of the realtime clock: 2026-01-01T00:00:00Z in nanoseconds, every call.
pub const REALTIME_NS: u64 = 1_767_225_600_000_000_000;

/// `clock_time_get` of the monotonic clock: always 0.
pub const MONOTONIC_NS: u64 = 0;

/// `clock_res_get` of both clocks, in nanoseconds.
pub const RESOLUTION_NS: u64 = 1_000;

/// Most bytes a program may write to standard output: one byte more fails the chunk
/// ([`Failure::StdoutTooLarge`]). Results are JSON values the master stores, so this is far
/// above any useful output and far below a volunteer's memory.
pub const STDOUT_LIMIT_BYTES: usize = 16 << 20;

/// Bytes of standard error kept for the failure text; the rest is dropped silently.
pub const STDERR_KEPT_BYTES: usize = 2048;

/// `errno` values the grid answers with.
pub mod errno {
    /// `EBADF`: no such file descriptor (or not one for this).
    pub const BADF: i32 = 8;
    /// `ENOSYS`: the function is not provided.
    pub const NOSYS: i32 = 52;
    /// `ENOTCAPABLE`: no capability for this (files, sockets).
    pub const NOTCAPABLE: i32 = 76;
}

/// What the grid does when a program calls a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Implemented, as `docs/task-abi.md` describes.
    Provided,
    /// Returns this `errno` and does nothing else (reads no argument).
    Refused(i32),
}

/// A `wasi_snapshot_preview1` function: name, core parameter and result types, support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Its import name.
    pub name: &'static str,
    /// Parameter types.
    pub params: &'static [ValType],
    /// Result types (`errno` as an `i32`, or nothing for `proc_exit`).
    pub results: &'static [ValType],
    /// What the grid answers.
    pub support: Support,
}

const I: ValType = ValType::I32;
const L: ValType = ValType::I64;
const ERRNO: &[ValType] = &[I];

const fn provided(name: &'static str, params: &'static [ValType]) -> Function {
    Function {
        name,
        params,
        results: ERRNO,
        support: Support::Provided,
    }
}

const fn nosys(name: &'static str, params: &'static [ValType]) -> Function {
    Function {
        name,
        params,
        results: ERRNO,
        support: Support::Refused(errno::NOSYS),
    }
}

const fn notcapable(name: &'static str, params: &'static [ValType]) -> Function {
    Function {
        name,
        params,
        results: ERRNO,
        support: Support::Refused(errno::NOTCAPABLE),
    }
}

/// Every function of WASI preview 1 (`wasi_snapshot_preview1.witx`), in its order.
pub const FUNCTIONS: &[Function] = &[
    provided("args_get", &[I, I]),
    provided("args_sizes_get", &[I, I]),
    provided("environ_get", &[I, I]),
    provided("environ_sizes_get", &[I, I]),
    provided("clock_res_get", &[I, I]),
    provided("clock_time_get", &[I, L, I]),
    nosys("fd_advise", &[I, L, L, I]),
    nosys("fd_allocate", &[I, L, L]),
    nosys("fd_close", &[I]),
    nosys("fd_datasync", &[I]),
    provided("fd_fdstat_get", &[I, I]),
    nosys("fd_fdstat_set_flags", &[I, I]),
    nosys("fd_fdstat_set_rights", &[I, L, L]),
    nosys("fd_filestat_get", &[I, I]),
    nosys("fd_filestat_set_size", &[I, L]),
    nosys("fd_filestat_set_times", &[I, L, L, I]),
    nosys("fd_pread", &[I, I, I, L, I]),
    provided("fd_prestat_get", &[I, I]),
    provided("fd_prestat_dir_name", &[I, I, I]),
    nosys("fd_pwrite", &[I, I, I, L, I]),
    provided("fd_read", &[I, I, I, I]),
    nosys("fd_readdir", &[I, I, I, L, I]),
    nosys("fd_renumber", &[I, I]),
    nosys("fd_seek", &[I, L, I, I]),
    nosys("fd_sync", &[I]),
    nosys("fd_tell", &[I, I]),
    provided("fd_write", &[I, I, I, I]),
    notcapable("path_create_directory", &[I, I, I]),
    notcapable("path_filestat_get", &[I, I, I, I, I]),
    notcapable("path_filestat_set_times", &[I, I, I, I, L, L, I]),
    notcapable("path_link", &[I, I, I, I, I, I, I]),
    notcapable("path_open", &[I, I, I, I, I, L, L, I, I]),
    notcapable("path_readlink", &[I, I, I, I, I, I]),
    notcapable("path_remove_directory", &[I, I, I]),
    notcapable("path_rename", &[I, I, I, I, I, I]),
    notcapable("path_symlink", &[I, I, I, I, I]),
    notcapable("path_unlink_file", &[I, I, I]),
    nosys("poll_oneoff", &[I, I, I, I]),
    Function {
        name: "proc_exit",
        params: &[I],
        results: &[],
        support: Support::Provided,
    },
    nosys("proc_raise", &[I]),
    provided("sched_yield", &[]),
    provided("random_get", &[I, I]),
    notcapable("sock_accept", &[I, I, I]),
    notcapable("sock_recv", &[I, I, I, I, I, I]),
    notcapable("sock_send", &[I, I, I, I, I]),
    notcapable("sock_shutdown", &[I, I]),
];

/// The preview 1 function named `name`.
pub fn function(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|function| function.name == name)
}

/// The function's type in WebAssembly text, e.g. `(param i32 i64) (result i32)`.
pub fn type_text(params: &[ValType], results: &[ValType]) -> String {
    let list = |types: &[ValType]| {
        types
            .iter()
            .map(|ty| ty.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut text = String::new();
    if !params.is_empty() {
        text.push_str(&format!("(param {})", list(params)));
    }
    if !results.is_empty() {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&format!("(result {})", list(results)));
    }
    if text.is_empty() {
        text.push_str("no parameters and no results");
    }
    text
}

/// The key of a chunk's random stream: SHA-256 of the label `grid-wasi-random-v1\0`, the
/// module id's length in bytes (8 bytes, little-endian), the module id and the chunk's input
/// text. `random_get` hands out the ChaCha20 keystream of this key (RFC 8439
/// block function, nonce 0, block counter from 0) byte after byte, across calls: every
/// replica of a chunk draws the same bytes, different chunks different ones.
pub fn random_seed(module_id: &str, input_text: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"grid-wasi-random-v1\0");
    hash.update((module_id.len() as u64).to_le_bytes());
    hash.update(module_id.as_bytes());
    hash.update(input_text.as_bytes());
    hash.finalize().into()
}

/// How a program's run ended, before its output is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramEnd {
    /// `_start` returned, or the program called `proc_exit(code)`.
    Exited(u32),
    /// It wrote more than [`STDOUT_LIMIT_BYTES`] to standard output.
    StdoutTooLarge,
    /// It failed otherwise (a trap, a timeout, memory at start).
    Failed(Failure),
}

impl ProgramEnd {
    /// The chunk's outcome: standard output as the output on exit code 0 (as `output` says);
    /// otherwise the failure, with what standard error kept ([`with_stderr`]). Timeouts and
    /// failures at start carry no standard error: a browser cannot read it from a stopped run.
    pub fn outcome(self, stdout: &[u8], stderr: &[u8], output: OutputMode) -> Outcome {
        match self {
            ProgramEnd::Exited(0) => output_outcome(stdout, output),
            ProgramEnd::Exited(code) => with_stderr(Failure::Exit { code }, stderr).into(),
            ProgramEnd::StdoutTooLarge => with_stderr(
                Failure::StdoutTooLarge {
                    limit: STDOUT_LIMIT_BYTES,
                },
                stderr,
            )
            .into(),
            ProgramEnd::Failed(failure @ Failure::Trap { .. }) => {
                with_stderr(failure, stderr).into()
            }
            ProgramEnd::Failed(failure) => failure.into(),
        }
    }
}

/// `failure` followed by the kept standard error (at most [`STDERR_KEPT_BYTES`], invalid
/// UTF-8 replaced), when there is any.
pub fn with_stderr(failure: Failure, stderr: &[u8]) -> Failure {
    let kept = &stderr[..stderr.len().min(STDERR_KEPT_BYTES)];
    let text = String::from_utf8_lossy(kept);
    let text = text.trim_end();
    if text.is_empty() {
        failure
    } else {
        Failure::WithStderr {
            failure: Box::new(failure),
            stderr: text.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::MemoryLimit;
    use crate::outcome::TrapKind;
    use serde_json::json;

    #[test]
    fn the_table_covers_preview_1() {
        assert_eq!(FUNCTIONS.len(), 46);
        for each in FUNCTIONS {
            assert_eq!(function(each.name), Some(each));
        }
        let fd_write = function("fd_write").expect("fd_write");
        assert_eq!(
            type_text(fd_write.params, fd_write.results),
            "(param i32 i32 i32 i32) (result i32)"
        );
        assert_eq!(type_text(&[], &[]), "no parameters and no results");
        assert_eq!(
            function("path_open").map(|f| f.support),
            Some(Support::Refused(errno::NOTCAPABLE))
        );
        assert_eq!(
            function("poll_oneoff").map(|f| f.support),
            Some(Support::Refused(errno::NOSYS))
        );
    }

    #[test]
    fn seeds_depend_on_module_and_input() {
        let a = random_seed("sha256:aa", "1");
        assert_eq!(a, random_seed("sha256:aa", "1"));
        assert_ne!(a, random_seed("sha256:aa", "2"));
        assert_ne!(a, random_seed("sha256:ab", "1"));
        // No ambiguity between the two parts.
        assert_ne!(random_seed("a", "b\0c"), random_seed("a\0b", "c"));
    }

    #[test]
    fn ends_become_outcomes() {
        let json = OutputMode::Json;
        assert_eq!(
            ProgramEnd::Exited(0).outcome(b"{\"b\":1,\"a\":2}\n", b"ignored", json),
            Outcome::Ok(json!({"a": 2, "b": 1}))
        );
        assert_eq!(
            ProgramEnd::Exited(0).outcome(b"55\n", b"", OutputMode::Text),
            Outcome::Ok(json!("55\n"))
        );
        assert_eq!(
            ProgramEnd::Exited(3).outcome(b"{}", b"no input\n", json),
            Outcome::Err("exit: the program exited with code 3; stderr: no input".into())
        );
        assert_eq!(
            ProgramEnd::Exited(3).outcome(b"{}", b"", json),
            Outcome::Err("exit: the program exited with code 3".into())
        );
        let long = vec![b'x'; 3 * STDERR_KEPT_BYTES];
        let Outcome::Err(text) = ProgramEnd::Exited(1).outcome(b"", &long, json) else {
            panic!("not an error");
        };
        assert_eq!(
            text.len(),
            "exit: the program exited with code 1; stderr: ".len() + STDERR_KEPT_BYTES
        );
        assert_eq!(
            ProgramEnd::StdoutTooLarge.outcome(b"", b"", json),
            Outcome::Err(
                "output limit exceeded: the program wrote more than 16777216 bytes to standard output"
                    .into()
            )
        );
        let trap = Failure::Trap {
            kind: TrapKind::Unreachable,
            memory_bytes: 1 << 20,
            limit: MemoryLimit::new(4),
        };
        assert_eq!(
            ProgramEnd::Failed(trap).outcome(b"", b"panicked at 'boom'\n", json),
            Outcome::Err(
                "trap: unreachable instruction executed (memory in use: 1 of 4 MiB); \
                 stderr: panicked at 'boom'"
                    .into()
            )
        );
        assert_eq!(
            ProgramEnd::Failed(Failure::Timeout { timeout_ms: 50 }).outcome(b"", b"x", json),
            Outcome::Err("timeout: the chunk ran longer than 50 ms".into())
        );
    }
}
