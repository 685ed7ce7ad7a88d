//! The per-chunk memory cap, applied the same way by every worker.
//!
//! The rule: a module's linear memory may not grow past the job's `max_memory_mb`. A
//! `memory.grow` that would pass the cap fails the way WebAssembly defines a failed grow (it
//! returns -1), exactly as if the module had declared that maximum itself; what the module does
//! then (Rust's allocator aborts, which traps) is its own business and is reported like any
//! other outcome. A module whose *initial* memory is already over the cap is not run at all
//! ([`MemoryLimit::check_start`]).
//!
//! The native worker enforces the cap with wasmtime's `ResourceLimiter`; a browser cannot
//! limit a memory the module defines, so the browser worker runs a copy of the module whose
//! declared maximum is lowered to the cap ([`cap_declared_maximum`]). Both give the same
//! results because a failed grow is fully specified.

use wasm_encoder::{MemorySection, MemoryType, RawSection};
use wasmparser::{Parser, Payload};

use crate::check::{AbiError, ModuleInfo};
use crate::outcome::Failure;

/// Bytes in a WebAssembly page.
pub const PAGE_BYTES: u64 = 65_536;

/// Pages in a MiB.
const PAGES_PER_MB: u64 = (1 << 20) / PAGE_BYTES;

/// A job's memory cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The cap in MiB.
    pub mb: u32,
}

impl MemoryLimit {
    /// A cap of `mb` MiB.
    pub fn new(mb: u32) -> MemoryLimit {
        MemoryLimit { mb }
    }

    /// The cap in bytes.
    pub fn bytes(self) -> u64 {
        u64::from(self.mb) << 20
    }

    /// The cap in pages.
    pub fn pages(self) -> u64 {
        u64::from(self.mb) * PAGES_PER_MB
    }

    /// Whether a memory may grow to `desired_bytes`.
    pub fn allows(self, desired_bytes: u64) -> bool {
        desired_bytes <= self.bytes()
    }

    /// A module whose initial memory is over the cap is not run: this is its failure.
    pub fn check_start(self, info: &ModuleInfo) -> Result<(), Failure> {
        if info.initial_pages > self.pages() {
            Err(Failure::MemoryAtStart {
                needed_bytes: info.initial_bytes(),
                limit: self,
            })
        } else {
            Ok(())
        }
    }
}

/// A copy of `module` whose memory declares a maximum of at most `limit` (its own maximum is
/// kept when lower). Every other section is copied byte for byte. Check the initial size with
/// [`MemoryLimit::check_start`] first: a module starting above the cap would become invalid.
pub fn cap_declared_maximum(module: &[u8], limit: MemoryLimit) -> Result<Vec<u8>, AbiError> {
    let invalid = |error: wasmparser::BinaryReaderError| AbiError::Invalid(error.to_string());
    let mut out = wasm_encoder::Module::new();
    let mut capped = false;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(invalid)?;
        if let Payload::MemorySection(reader) = &payload {
            let mut section = MemorySection::new();
            for memory in reader.clone() {
                let memory = memory.map_err(invalid)?;
                let maximum = memory
                    .maximum
                    .map_or(limit.pages(), |own| own.min(limit.pages()));
                section.memory(MemoryType {
                    minimum: memory.initial,
                    maximum: Some(maximum),
                    memory64: memory.memory64,
                    shared: memory.shared,
                    page_size_log2: memory.page_size_log2,
                });
            }
            out.section(&section);
            capped = true;
        } else if let Some((id, range)) = payload.as_section() {
            let data = module
                .get(range)
                .ok_or_else(|| AbiError::Invalid("a section runs past the end".into()))?;
            out.section(&RawSection { id, data });
        }
    }
    if !capped {
        return Err(AbiError::MissingExport("memory"));
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::check::check_module;

    fn module(memory: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 (memory (export "memory") {memory})
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 8)
                 (func (export "grid_run") (param i32 i32) (result i64) i64.const 0)
                 (data (i32.const 0) "kept"))"#
        ))
        .unwrap()
    }

    #[test]
    fn the_cap_is_written_into_the_module() {
        let limit = MemoryLimit::new(2);
        assert_eq!(limit.pages(), 32);
        assert_eq!(limit.bytes(), 2 << 20);

        let capped = cap_declared_maximum(&module("1"), limit).unwrap();
        let info = check_module(&capped).unwrap();
        assert_eq!(info.initial_pages, 1);
        assert_eq!(info.maximum_pages, Some(32));
        // The rest of the module is untouched: the data segment is still there.
        assert!(capped.windows(4).any(|w| w == b"kept"));

        // A lower maximum of the module's own is kept.
        let own = cap_declared_maximum(&module("1 4"), limit).unwrap();
        assert_eq!(check_module(&own).unwrap().maximum_pages, Some(4));
    }

    #[test]
    fn a_module_starting_over_the_cap_fails_before_running() {
        let info = check_module(&module("40")).unwrap();
        let failure = MemoryLimit::new(2).check_start(&info).unwrap_err();
        assert_eq!(
            failure.to_string(),
            "memory limit exceeded: the module needs 3 MiB at start; the limit is 2 MiB"
        );
        assert!(MemoryLimit::new(3).check_start(&info).is_ok());
    }
}
