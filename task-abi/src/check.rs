//! The upload-time check: is this a WebAssembly module that follows one of the two task ABIs?
//!
//! The module is parsed and fully validated by `wasmparser` with the feature set of the
//! WebAssembly 2.0 specification (SIMD included; threads, 64-bit memories and other proposals
//! that not every worker's engine runs alike are refused), then its imports and exports are
//! compared with the ABI it follows ([`Abi`]): a module exporting `_start` is a WASI command
//! module, whose every import must be a `wasi_snapshot_preview1` function of the right type
//! ([`crate::wasi::FUNCTIONS`]); any other is a raw module, which imports nothing and exports
//! `grid_alloc` and `grid_run`. The first problem found is reported, in words a module author
//! can act on.

use wasmparser::types::EntityType;
use wasmparser::{ValType, Validator, WasmFeatures};

use crate::limits::MAX_TABLES;
use crate::memory::{PAGE_BYTES, table_element_bytes};
use crate::wasi;

/// Which of the two ABIs a module follows (`docs/task-abi.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    /// The grid's own: no imports, `grid_alloc` and `grid_run`.
    Raw,
    /// A WASI command module: `_start`, imports from `wasi_snapshot_preview1` only; the input
    /// on standard input, the output on standard output.
    Wasi,
}

/// What the master learns about an accepted module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The ABI it follows.
    pub abi: Abi,
    /// Pages (64 KiB) of linear memory the module starts with.
    pub initial_pages: u64,
    /// The maximum the module declares for its memory, in pages, if any.
    pub maximum_pages: Option<u64>,
    /// Tables the module has (at most [`MAX_TABLES`]).
    pub tables: u32,
    /// Bytes its tables take at start: each table's initial size times the bytes an element
    /// takes ([`table_element_bytes`]). They count against the memory cap (see
    /// [`crate::memory`]).
    pub initial_table_bytes: u64,
}

impl ModuleInfo {
    /// Bytes of memory at start.
    pub fn initial_bytes(&self) -> u64 {
        self.initial_pages.saturating_mul(PAGE_BYTES)
    }
}

/// Why a module is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// Not a WebAssembly binary module at all.
    #[error("not a WebAssembly module: the file does not start with the `\\0asm` magic number")]
    NotWasm,
    /// Parsing or validation failed.
    #[error("invalid WebAssembly module: {0}")]
    Invalid(String),
    /// A raw module imports something; raw modules must be self-contained.
    #[error(
        "the module imports `{module}`.`{name}`; a task module either imports nothing (the raw ABI: \
         `grid_alloc` and `grid_run`) or is a WASI command module (exports `_start` and imports \
         only functions of `wasi_snapshot_preview1`)"
    )]
    Import {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// A WASI command module imports from another module, or something other than a function.
    #[error(
        "the module imports `{module}`.`{name}`; a WASI command module may import only functions \
         of `wasi_snapshot_preview1` (no other module, no memories, tables or globals)"
    )]
    WasiImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// A WASI command module imports a function WASI preview 1 does not have.
    #[error(
        "the module imports `wasi_snapshot_preview1`.`{0}`, which is not a WASI preview 1 function"
    )]
    UnknownWasiFunction(String),
    /// A WASI command module with a start function: it would call WASI before `_start`, when
    /// a browser's shim cannot reach the memory yet.
    #[error("a WASI command module may not have a start function (its program starts at `_start`)")]
    WasiStartFunction,
    /// A WASI function imported with the wrong type.
    #[error("the module imports `wasi_snapshot_preview1`.`{name}` as {actual}; it is {expected}")]
    WasiSignature {
        /// The function.
        name: String,
        /// Its type as imported.
        actual: String,
        /// Its type in WASI preview 1.
        expected: String,
    },
    /// A required export is missing.
    #[error(
        "the module does not export `{0}` (a raw task module exports `memory`, `grid_alloc` and \
         `grid_run`; a WASI command module exports `memory` and `_start`)"
    )]
    MissingExport(&'static str),
    /// A required export has the wrong kind or signature.
    #[error("the export `{name}` must be {expected}")]
    WrongExport {
        /// The export.
        name: &'static str,
        /// What the ABI wants.
        expected: &'static str,
    },
    /// The memory is not one the ABI allows.
    #[error("unsupported memory: {0}")]
    Memory(&'static str),
    /// More tables than [`MAX_TABLES`].
    #[error("the module defines {0} tables; at most {MAX_TABLES} are allowed")]
    Tables(u32),
}

/// The WebAssembly features a task module may use: the 2.0 specification, which every
/// supported engine runs with the same results.
fn features() -> WasmFeatures {
    WasmFeatures::WASM2
}

/// Check `bytes` against the task ABI (see the crate documentation).
pub fn check_module(bytes: &[u8]) -> Result<ModuleInfo, AbiError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(AbiError::NotWasm);
    }
    let types = Validator::new_with_features(features())
        .validate_all(bytes)
        .map_err(|error| AbiError::Invalid(error.to_string()))?;
    let types = types.as_ref();
    let exports: Vec<(&str, EntityType)> = types.core_exports().into_iter().flatten().collect();
    let abi = if exports.iter().any(|(name, _)| *name == wasi::START) {
        Abi::Wasi
    } else {
        Abi::Raw
    };
    for (module, name, entity) in types.core_imports().into_iter().flatten() {
        match abi {
            Abi::Raw => {
                return Err(AbiError::Import {
                    module: module.to_owned(),
                    name: name.to_owned(),
                });
            }
            Abi::Wasi => check_wasi_import(types, module, name, entity)?,
        }
    }
    // Imported tables and memories would count too, but only functions may be imported.
    let tables = types.table_count();
    if tables > MAX_TABLES {
        return Err(AbiError::Tables(tables));
    }
    let initial_table_bytes = (0..tables)
        .map(|index| {
            let table = types.table_at(index);
            table
                .initial
                .saturating_mul(table_element_bytes(table.element_type))
        })
        .fold(0_u64, u64::saturating_add);
    let find = |name: &'static str| {
        exports
            .iter()
            .find(|(export, _)| *export == name)
            .map(|(_, entity)| *entity)
            .ok_or(AbiError::MissingExport(name))
    };

    let memory = match find("memory")? {
        EntityType::Memory(memory) => memory,
        _ => {
            return Err(AbiError::WrongExport {
                name: "memory",
                expected: "a memory",
            });
        }
    };
    if memory.memory64 {
        return Err(AbiError::Memory("64-bit memories are not supported"));
    }
    if memory.shared {
        return Err(AbiError::Memory("shared memories are not supported"));
    }
    if memory.page_size_log2.is_some() {
        return Err(AbiError::Memory("custom page sizes are not supported"));
    }
    if types.memory_count() != 1 {
        return Err(AbiError::Memory(
            "the module must define exactly one memory",
        ));
    }

    let signature = |name: &'static str, params: &[ValType], results: &[ValType], expected| {
        let wrong = AbiError::WrongExport { name, expected };
        match find(name)? {
            EntityType::Func(id) => {
                let func = types[id].unwrap_func();
                if func.params() == params && func.results() == results {
                    Ok(())
                } else {
                    Err(wrong)
                }
            }
            _ => Err(wrong),
        }
    };
    match abi {
        Abi::Raw => {
            signature(
                "grid_alloc",
                &[ValType::I32],
                &[ValType::I32],
                "a function (param i32) (result i32)",
            )?;
            signature(
                "grid_run",
                &[ValType::I32, ValType::I32],
                &[ValType::I64],
                "a function (param i32 i32) (result i64)",
            )?;
        }
        Abi::Wasi => {
            signature(
                wasi::START,
                &[],
                &[],
                "a function with no parameters and no results",
            )?;
            if has_start_function(bytes) {
                return Err(AbiError::WasiStartFunction);
            }
        }
    }
    Ok(ModuleInfo {
        abi,
        initial_pages: memory.initial,
        maximum_pages: memory.maximum,
        tables,
        initial_table_bytes,
    })
}

/// Whether the (valid) module has a start section.
fn has_start_function(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .any(|payload| matches!(payload, Ok(wasmparser::Payload::StartSection { .. })))
}

/// Check one import of a WASI command module: a preview 1 function of its own type.
fn check_wasi_import(
    types: wasmparser::types::TypesRef<'_>,
    module: &str,
    name: &str,
    entity: EntityType,
) -> Result<(), AbiError> {
    let EntityType::Func(id) = entity else {
        return Err(AbiError::WasiImport {
            module: module.to_owned(),
            name: name.to_owned(),
        });
    };
    if module != wasi::MODULE {
        return Err(AbiError::WasiImport {
            module: module.to_owned(),
            name: name.to_owned(),
        });
    }
    let function =
        wasi::function(name).ok_or_else(|| AbiError::UnknownWasiFunction(name.to_owned()))?;
    let func = types[id].unwrap_func();
    if func.params() != function.params || func.results() != function.results {
        return Err(AbiError::WasiSignature {
            name: name.to_owned(),
            actual: wasi::type_text(func.params(), func.results()),
            expected: wasi::type_text(function.params, function.results),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A minimal module following the ABI, with `extra` spliced into its body.
    pub(crate) fn abi_module(extra: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 (memory (export "memory") 1)
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 1024)
                 (func (export "grid_run") (param i32 i32) (result i64)
                   (i64.or (i64.shl (i64.extend_i32_u (local.get 0)) (i64.const 32))
                           (i64.extend_i32_u (local.get 1))))
                 {extra})"#
        ))
        .unwrap()
    }

    #[test]
    fn a_module_following_the_abi_passes() {
        let info = check_module(&abi_module("")).unwrap();
        assert_eq!(
            info,
            ModuleInfo {
                abi: Abi::Raw,
                initial_pages: 1,
                maximum_pages: None,
                tables: 0,
                initial_table_bytes: 0,
            }
        );
        assert_eq!(info.initial_bytes(), 65_536);
    }

    #[test]
    fn tables_are_counted_and_sized() {
        let info = check_module(&abi_module("(table 10 funcref) (table 3 20 externref)")).unwrap();
        assert_eq!(info.tables, 2);
        assert_eq!(info.initial_table_bytes, 10 * 8 + 3 * 4);

        let four = (0..4).map(|_| "(table 1 funcref)").collect::<String>();
        assert_eq!(check_module(&abi_module(&four)).unwrap().tables, 4);
        // The review's table bomb has ten.
        let ten = (0..10)
            .map(|_| "(table 10000000 funcref)")
            .collect::<String>();
        let refused = check_module(&abi_module(&ten)).unwrap_err();
        assert_eq!(refused, AbiError::Tables(10));
        assert_eq!(
            refused.to_string(),
            "the module defines 10 tables; at most 4 are allowed"
        );
    }

    #[test]
    fn violations_say_what_is_wrong() {
        assert_eq!(check_module(b"hello"), Err(AbiError::NotWasm));
        assert!(matches!(
            check_module(b"\0asm\x01\0\0\0\x99"),
            Err(AbiError::Invalid(_))
        ));
        let import =
            wat::parse_str(r#"(module (import "env" "now" (func)) (memory (export "memory") 1))"#)
                .unwrap();
        assert_eq!(
            check_module(&import),
            Err(AbiError::Import {
                module: "env".into(),
                name: "now".into()
            })
        );
        let no_run = wat::parse_str(
            r#"(module (memory (export "memory") 1)
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 0))"#,
        )
        .unwrap();
        assert_eq!(
            check_module(&no_run),
            Err(AbiError::MissingExport("grid_run"))
        );
        let wrong = wat::parse_str(
            r#"(module (memory (export "memory") 1)
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 0)
                 (func (export "grid_run") (param i32 i32) (result i32) i32.const 0))"#,
        )
        .unwrap();
        assert!(
            check_module(&wrong)
                .unwrap_err()
                .to_string()
                .contains("`grid_run` must be a function (param i32 i32) (result i64)")
        );
        let no_memory = wat::parse_str(
            r#"(module
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 0)
                 (func (export "grid_run") (param i32 i32) (result i64) i64.const 0))"#,
        )
        .unwrap();
        assert_eq!(
            check_module(&no_memory),
            Err(AbiError::MissingExport("memory"))
        );
    }

    /// A WASI command module with `imports` and `extra` spliced in.
    fn wasi_module(imports: &str, extra: &str) -> Result<ModuleInfo, AbiError> {
        check_module(
            &wat::parse_str(format!(
                r#"(module {imports}
                     (memory (export "memory") 2)
                     (func (export "_start"))
                     {extra})"#
            ))
            .unwrap(),
        )
    }

    #[test]
    fn wasi_command_modules_pass() {
        let info = wasi_module(
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
               (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))"#,
            "",
        )
        .unwrap();
        assert_eq!(info.abi, Abi::Wasi);
        assert_eq!(info.initial_pages, 2);
        // No imports at all is a WASI module too, if it has `_start`.
        assert_eq!(wasi_module("", "").unwrap().abi, Abi::Wasi);
    }

    #[test]
    fn wasi_modules_import_only_preview_1_functions() {
        let refused = wasi_module(r#"(import "env" "now" (func (result i64)))"#, "").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the module imports `env`.`now`; a WASI command module may import only functions of \
             `wasi_snapshot_preview1` (no other module, no memories, tables or globals)"
        );
        let preview2 = wasi_module(
            r#"(import "wasi:cli/stdout@0.2.0" "get-stdout" (func (result i32)))"#,
            "",
        )
        .unwrap_err();
        assert!(
            matches!(&preview2, AbiError::WasiImport { module, .. } if module == "wasi:cli/stdout@0.2.0"),
            "{preview2}"
        );
        let unknown = wasi_module(
            r#"(import "wasi_snapshot_preview1" "sock_open" (func (param i32) (result i32)))"#,
            "",
        )
        .unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "the module imports `wasi_snapshot_preview1`.`sock_open`, which is not a WASI preview 1 function"
        );
        let wrong = wasi_module(
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32) (result i32)))"#,
            "",
        )
        .unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "the module imports `wasi_snapshot_preview1`.`fd_write` as (param i32 i32) (result i32); \
             it is (param i32 i32 i32 i32) (result i32)"
        );
        let memory = wasi_module(
            r#"(import "wasi_snapshot_preview1" "mem" (global i32))"#,
            "",
        )
        .unwrap_err();
        assert!(matches!(memory, AbiError::WasiImport { .. }), "{memory}");
        let start = check_module(
            &wat::parse_str(
                r#"(module (memory (export "memory") 1)
                     (func (export "_start") (param i32)))"#,
            )
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            start.to_string(),
            "the export `_start` must be a function with no parameters and no results"
        );
        let started = wasi_module("", "(func $init) (start $init)").unwrap_err();
        assert_eq!(started, AbiError::WasiStartFunction);
        let no_memory =
            check_module(&wat::parse_str(r#"(module (func (export "_start")))"#).unwrap());
        assert_eq!(no_memory, Err(AbiError::MissingExport("memory")));
    }

    #[test]
    fn proposals_beyond_wasm2_are_refused() {
        let shared = wat::parse_str(
            r#"(module (memory (export "memory") 1 2 shared)
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 0)
                 (func (export "grid_run") (param i32 i32) (result i64) i64.const 0))"#,
        )
        .unwrap();
        assert!(matches!(check_module(&shared), Err(AbiError::Invalid(_))));
    }
}
