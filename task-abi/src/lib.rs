//! `grid-task-abi`: the contract between the grid and an uploaded WebAssembly task module.
//!
//! Two ABIs (documented for module authors in `docs/task-abi.md`):
//! - **raw**: a module exports `memory`, `grid_alloc(len: i32) -> i32` and
//!   `grid_run(ptr: i32, len: i32) -> i64`, and imports nothing. A worker writes the chunk's
//!   input as UTF-8 JSON text at `grid_alloc(len)`, calls `grid_run(ptr, len)` and reads the
//!   output, UTF-8 JSON text, at the returned `(out_ptr << 32) | out_len`.
//! - **WASI command modules**: a module exports `memory` and `_start` and imports only
//!   `wasi_snapshot_preview1` functions; the input is its standard input, the output its
//!   standard output, in the fixed, deterministic world of [`wasi`].
//!
//! This crate is what the master and both workers share about modules, so every party applies
//! the same rules and every honest worker reports a failure with the same bytes (the master
//! compares outcomes by digest):
//!
//! # Layout
//! - [`lib.rs`](crate): module ids ([`module_id`], [`is_module_id`]) and the per-job limits
//!   ([`limits`]).
//! - [`check`]: [`check::check_module`], the upload-time validation against the ABI (a real
//!   wasm parser and validator, `wasmparser`).
//! - [`memory`]: the memory cap: [`memory::MemoryLimit`], the start-up check, and
//!   [`memory::cap_declared_maximum`], which writes the cap into a module (how browsers enforce
//!   it; the native worker uses wasmtime's `ResourceLimiter`).
//! - [`wasi`]: the WASI preview 1 subset a program gets (functions, clocks, random stream,
//!   output bounds) and how its end becomes an outcome ([`wasi::ProgramEnd`]).
//! - [`outcome`]: the input bytes a module gets ([`outcome::input_text`]), how its output
//!   becomes an [`Outcome`](grid_protocol::Outcome) ([`outcome::output_outcome`]), and
//!   [`outcome::Failure`]/[`outcome::TrapKind`], the engine-independent failure messages.
//!
//! Running modules is not here: `grid-worker` runs them with wasmtime (and wasmtime-wasi), the
//! browser worker with the browser's own engine (and the WASI shim of `frontend/src/sandbox.js`).

pub mod check;
pub mod memory;
pub mod outcome;
pub mod wasi;

pub use check::{Abi, AbiError, ModuleInfo, check_module};
pub use memory::MemoryLimit;
pub use outcome::{Failure, TrapKind};

use sha2::{Digest, Sha256};

/// Prefix of every module id.
pub const MODULE_ID_PREFIX: &str = "sha256:";

/// The content address of a module: `sha256:` and the lowercase hex SHA-256 of its bytes.
pub fn module_id(bytes: &[u8]) -> String {
    format!("{MODULE_ID_PREFIX}{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `id` has the form of a module id (`sha256:` and 64 lowercase hex digits).
pub fn is_module_id(id: &str) -> bool {
    id.strip_prefix(MODULE_ID_PREFIX).is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Where the master whose worker WebSocket is `ws_url` (`ws[s]://host[:port]/ws`) serves the
/// module `id`: on the same host and port over HTTP(S),
/// `http[s]://host[:port]/api/v1/modules/{id}`. Both workers fetch modules from here. `None`
/// when `ws_url` is not a `ws://` or `wss://` URL with a host.
pub fn module_url(ws_url: &str, id: &str) -> Option<String> {
    let (scheme, rest) = if let Some(rest) = ws_url.strip_prefix("wss://") {
        ("https", rest)
    } else if let Some(rest) = ws_url.strip_prefix("ws://") {
        ("http", rest)
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{authority}/api/v1/modules/{id}"))
}

/// The limits a job sets on each chunk of a module, with their defaults and ceilings. Every
/// worker enforces them; the master checks them at submission.
pub mod limits {
    /// Largest module accepted at upload by default (the master's `--max-module-bytes`).
    pub const DEFAULT_MAX_MODULE_BYTES: usize = 8 * 1024 * 1024;
    /// Wall-clock time one chunk may run, by default.
    pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;
    /// Shortest `timeout_ms` a job may set.
    pub const MIN_TIMEOUT_MS: u32 = 10;
    /// Longest `timeout_ms` a job may set (ten minutes).
    pub const MAX_TIMEOUT_MS: u32 = 600_000;
    /// Linear memory one chunk may use, by default, in MiB.
    pub const DEFAULT_MAX_MEMORY_MB: u32 = 256;
    /// Smallest `max_memory_mb` a job may set.
    pub const MIN_MAX_MEMORY_MB: u32 = 1;
    /// Largest `max_memory_mb` a job may set: volunteers' browsers must not be asked for more.
    pub const MAX_MAX_MEMORY_MB: u32 = 2048;
    /// Most tables a module may have (checked at upload). The 2.0 specification allows 100,
    /// and every table counts against the memory cap, but a cap alone still lets a module
    /// spread its budget over many tables; four is far more than any toolchain emits
    /// (`wasm-ld` and `rustc` make one).
    pub const MAX_TABLES: u32 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_content_addresses() {
        let id = module_id(b"\0asm");
        assert!(is_module_id(&id), "{id}");
        assert_eq!(id, module_id(b"\0asm"));
        assert_ne!(id, module_id(b"\0asm\x01"));
        assert!(!is_module_id("sha256:"));
        assert!(!is_module_id(&id.to_uppercase()));
        assert!(!is_module_id(&id.replace("sha256:", "md5:")));
        assert!(!is_module_id(&format!("{id}0")));
        assert!(!is_module_id("primes"));
    }

    #[test]
    fn module_urls_follow_the_masters_websocket_url() {
        let id = module_id(b"x");
        for (ws, http) in [
            ("ws://127.0.0.1:8080/ws", "http://127.0.0.1:8080"),
            ("wss://grid.example/ws", "https://grid.example"),
            ("wss://grid.example/ws?x=1", "https://grid.example"),
            ("ws://[::1]:9000/ws/", "http://[::1]:9000"),
            ("ws://host", "http://host"),
            ("ws://host?x", "http://host"),
        ] {
            assert_eq!(
                module_url(ws, &id),
                Some(format!("{http}/api/v1/modules/{id}")),
                "{ws}"
            );
        }
        assert_eq!(module_url("http://host/ws", &id), None);
        assert_eq!(module_url("ws:///ws", &id), None);
    }
}
