//! The per-chunk memory cap, applied the same way by every worker.
//!
//! The cap (`max_memory_mb`) covers the module's linear memory **and its tables**: a table of
//! ten million `funcref`s is 80 MB of the volunteer's memory whatever the module's linear
//! memory is. Table elements are counted at the bytes wasmtime stores per element on a 64-bit
//! machine ([`table_element_bytes`]: 8 for a `funcref`, 4 for an `externref`); browsers'
//! engines use at least as much. The rule, with *T* the bytes of the module's tables at start
//! (their initial sizes, [`ModuleInfo::initial_table_bytes`]):
//!
//! - a module whose initial memory plus *T* is over the cap is not run at all
//!   ([`MemoryLimit::check_start`]);
//! - tables keep the size they start with: a `table.grow` of one element or more returns -1
//!   (a grow by 0 succeeds), exactly as if each table had declared its initial size as its
//!   maximum;
//! - linear memory may grow while memory plus *T* stays within the cap: a `memory.grow` past
//!   that fails the way WebAssembly defines a failed grow (it returns -1), exactly as if the
//!   module had declared that maximum itself ([`MemoryLimit::memory_maximum_pages`]). What the
//!   module does then (Rust's allocator aborts, which traps) is its own business and is
//!   reported like any other outcome.
//!
//! The split is static (the tables' share is fixed at start, the rest is the memory's) so that
//! it can be written into the module: the native worker enforces it with wasmtime's
//! `ResourceLimiter`, which also keeps the sum of all memories and tables of the chunk's store
//! under the cap; a browser cannot limit a memory or a table the module defines, so the
//! browser worker runs a copy of the module whose declared maxima are the rule's
//! ([`cap_declared_maximum`]). Both give the same results because a failed grow is fully
//! specified.

use wasm_encoder::{MemorySection, MemoryType, RawSection, RefType, TableSection, TableType};
use wasmparser::{Parser, Payload, TableInit};

use crate::check::{AbiError, ModuleInfo, check_module};
use crate::outcome::Failure;

/// Bytes in a WebAssembly page.
pub const PAGE_BYTES: u64 = 65_536;

/// Pages in a MiB.
const PAGES_PER_MB: u64 = (1 << 20) / PAGE_BYTES;

/// Bytes a `funcref` table element takes: wasmtime stores a pointer per element
/// (`Option<SendSyncPtr<VMFuncRef>>`, `vm/table.rs`).
pub const FUNCREF_BYTES: u64 = 8;

/// Bytes an `externref` table element takes: wasmtime stores a 32-bit GC reference
/// (`Option<VMGcRef>`).
pub const EXTERNREF_BYTES: u64 = 4;

/// Bytes one element of a table of `element_type` counts for against the memory cap.
pub fn table_element_bytes(element_type: wasmparser::RefType) -> u64 {
    if element_type.is_extern_ref() {
        EXTERNREF_BYTES
    } else {
        // `funcref`, and anything a later proposal might add: a pointer.
        FUNCREF_BYTES
    }
}

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

    /// Whether memories and tables of `total_bytes` in all fit the cap.
    pub fn allows(self, total_bytes: u64) -> bool {
        total_bytes <= self.bytes()
    }

    /// A module whose initial memory and tables are over the cap is not run: this is its
    /// failure.
    pub fn check_start(self, info: &ModuleInfo) -> Result<(), Failure> {
        if self.allows(
            info.initial_bytes()
                .saturating_add(info.initial_table_bytes),
        ) {
            Ok(())
        } else {
            Err(Failure::MemoryAtStart {
                memory_bytes: info.initial_bytes(),
                table_bytes: info.initial_table_bytes,
                limit: self,
            })
        }
    }

    /// The most pages the memory of a module of `info` may grow to under this cap: what the
    /// tables leave of it (whatever the module itself declares; see the module documentation).
    pub fn memory_maximum_pages(self, info: &ModuleInfo) -> u64 {
        self.bytes().saturating_sub(info.initial_table_bytes) / PAGE_BYTES
    }
}

/// A copy of `module` whose declared maxima follow the cap `limit` (see the module
/// documentation): the memory's is at most [`MemoryLimit::memory_maximum_pages`] (its own is
/// kept when lower), and each table's is its initial size. Every other section is copied byte
/// for byte. Check the initial sizes with [`MemoryLimit::check_start`] first: a module starting
/// above the cap would become invalid.
pub fn cap_declared_maximum(module: &[u8], limit: MemoryLimit) -> Result<Vec<u8>, AbiError> {
    let info = check_module(module)?;
    let invalid = |error: wasmparser::BinaryReaderError| AbiError::Invalid(error.to_string());
    let memory_maximum = limit.memory_maximum_pages(&info);
    let mut out = wasm_encoder::Module::new();
    let mut capped = false;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(invalid)?;
        if let Payload::TableSection(reader) = &payload {
            let mut section = TableSection::new();
            for table in reader.clone() {
                let table = table.map_err(invalid)?;
                if !matches!(table.init, TableInit::RefNull) {
                    // Initialiser expressions are the function-references proposal, which
                    // `check_module` refuses.
                    return Err(AbiError::Invalid(
                        "a table has an initialiser expression".into(),
                    ));
                }
                let element_type = if table.ty.element_type.is_extern_ref() {
                    RefType::EXTERNREF
                } else if table.ty.element_type.is_func_ref() {
                    RefType::FUNCREF
                } else {
                    return Err(AbiError::Invalid(
                        "a table holds neither funcref nor externref".into(),
                    ));
                };
                section.table(TableType {
                    element_type,
                    table64: table.ty.table64,
                    minimum: table.ty.initial,
                    maximum: Some(table.ty.initial),
                    shared: table.ty.shared,
                });
            }
            out.section(&section);
        } else if let Payload::MemorySection(reader) = &payload {
            let mut section = MemorySection::new();
            for memory in reader.clone() {
                let memory = memory.map_err(invalid)?;
                let maximum = memory
                    .maximum
                    .map_or(memory_maximum, |own| own.min(memory_maximum));
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

    fn module(memory: &str) -> Vec<u8> {
        module_with(memory, "")
    }

    /// A module with `memory` as its memory declaration and `tables` before it.
    fn module_with(memory: &str, tables: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 {tables}
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

    /// The table bytes of a capped module, by table, as (initial, maximum).
    fn table_limits(module: &[u8]) -> Vec<(u64, Option<u64>)> {
        let mut limits = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Payload::TableSection(reader) = payload.unwrap() {
                for table in reader {
                    let table = table.unwrap();
                    limits.push((table.ty.initial, table.ty.maximum));
                }
            }
        }
        limits
    }

    #[test]
    fn tables_count_against_the_cap() {
        // 2 MiB: one 64 KiB page of memory and 100,000 funcrefs (800,000 bytes) fit.
        let limit = MemoryLimit::new(2);
        let bytes = module_with("1", "(table 100000 funcref) (table 10 1000 externref)");
        let info = check_module(&bytes).unwrap();
        assert_eq!(info.initial_table_bytes, 800_000 + 40);
        assert!(limit.check_start(&info).is_ok());
        // What the tables leave: (2 MiB - 800,040 bytes) / 64 KiB = 19 pages.
        assert_eq!(limit.memory_maximum_pages(&info), 19);

        let capped = cap_declared_maximum(&bytes, limit).unwrap();
        let capped_info = check_module(&capped).unwrap();
        assert_eq!(capped_info.maximum_pages, Some(19));
        assert_eq!(capped_info.initial_table_bytes, info.initial_table_bytes);
        // Tables keep their initial size, whatever they declared.
        assert_eq!(
            table_limits(&capped),
            [(100_000, Some(100_000)), (10, Some(10))]
        );
        assert!(capped.windows(4).any(|w| w == b"kept"));

        // Over the cap at start, with the tables' share in the text.
        let bomb = module_with(
            "1",
            &(0..4)
                .map(|_| "(table 10000000 funcref)")
                .collect::<String>(),
        );
        let failure = MemoryLimit::new(16)
            .check_start(&check_module(&bomb).unwrap())
            .unwrap_err();
        assert_eq!(
            failure.to_string(),
            "memory limit exceeded: the module needs 306 MiB at start \
             (65536 bytes of memory, 320000000 bytes of tables); the limit is 16 MiB"
        );
        // Memory alone at the cap and one table element over it.
        let edge = module_with("32", "(table 1 funcref)");
        assert_eq!(
            MemoryLimit::new(2)
                .check_start(&check_module(&edge).unwrap())
                .unwrap_err()
                .to_string(),
            "memory limit exceeded: the module needs 3 MiB at start (2097152 bytes of memory, \
             8 bytes of tables); the limit is 2 MiB"
        );
        // Memory alone over the cap: the text without tables, as before tables counted.
        let over = module_with("40", "(table 1 funcref)");
        assert_eq!(
            MemoryLimit::new(2)
                .check_start(&check_module(&over).unwrap())
                .unwrap_err()
                .to_string(),
            "memory limit exceeded: the module needs 3 MiB at start; the limit is 2 MiB"
        );
    }
}
