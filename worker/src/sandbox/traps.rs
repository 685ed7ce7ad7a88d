//! How an error out of wasmtime becomes a [`Failure`]: a timeout, or a trap named by its
//! engine-independent [`TrapKind`].
//!
//! wasmtime's trap codes map one to one onto [`TrapKind`]s but for one case. A float-to-integer
//! truncation (`i32.trunc_f64_s` and its kin) of a value out of the integer's range traps with
//! `Trap::IntegerOverflow` in wasmtime (the specification's wording), while the browsers call it
//! an invalid conversion, as they do for NaN, and keep "integer overflow" for `div_s` of the
//! smallest integer by -1. The task ABI follows the browsers (see [`TrapKind`]), so an
//! integer-overflow trap is looked up by where it happened: [`TrapSites`] holds the offsets
//! of the module's trapping truncations.

use grid_task_abi::{Failure, TrapKind};
use wasmparser::{BinaryReaderError, Operator, Parser, Payload};
use wasmtime::{Trap, WasmBacktrace};

use super::ChunkLimits;

/// Where in a module a trap needs its instruction to be classified.
#[derive(Debug, Default)]
pub(super) struct TrapSites {
    /// Module offsets of the non-saturating float-to-integer truncations, ascending.
    truncations: Vec<usize>,
}

impl TrapSites {
    /// Scan the code of a valid module.
    pub(super) fn find(module: &[u8]) -> Result<TrapSites, BinaryReaderError> {
        let mut truncations = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            let Payload::CodeSectionEntry(body) = payload? else {
                continue;
            };
            let mut operators = body.get_operators_reader()?;
            while !operators.eof() {
                let (operator, offset) = operators.read_with_offset()?;
                if is_trapping_truncation(&operator) {
                    truncations.push(offset);
                }
            }
        }
        // Function bodies come in order, so the offsets do too.
        Ok(TrapSites { truncations })
    }

    /// The kind of `trap`, raised with `error`.
    fn kind(&self, trap: Trap, error: &wasmtime::Error) -> TrapKind {
        match trap {
            Trap::UnreachableCodeReached => TrapKind::Unreachable,
            Trap::MemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
            Trap::HeapMisaligned => TrapKind::MisalignedAccess,
            Trap::TableOutOfBounds => TrapKind::TableOutOfBounds,
            Trap::IndirectCallToNull | Trap::BadSignature => TrapKind::IndirectCall,
            Trap::IntegerDivisionByZero => TrapKind::IntegerDivideByZero,
            Trap::IntegerOverflow if self.at_truncation(error) => TrapKind::BadConversionToInteger,
            Trap::IntegerOverflow => TrapKind::IntegerOverflow,
            Trap::BadConversionToInteger => TrapKind::BadConversionToInteger,
            Trap::StackOverflow => TrapKind::StackOverflow,
            // The rest belong to proposals beyond WebAssembly 2.0 (GC, components, fuel...),
            // which the ABI check keeps out.
            _ => TrapKind::Other,
        }
    }

    /// Whether the trap behind `error` was raised by a truncation (its backtrace's youngest
    /// frame is at one).
    fn at_truncation(&self, error: &wasmtime::Error) -> bool {
        error
            .downcast_ref::<WasmBacktrace>()
            .and_then(|backtrace| backtrace.frames().first())
            .and_then(|frame| frame.module_offset())
            .is_some_and(|offset| self.truncations.binary_search(&offset).is_ok())
    }
}

/// The trapping (non-`sat`) float-to-integer conversions.
fn is_trapping_truncation(operator: &Operator<'_>) -> bool {
    matches!(
        operator,
        Operator::I32TruncF32S
            | Operator::I32TruncF32U
            | Operator::I32TruncF64S
            | Operator::I32TruncF64U
            | Operator::I64TruncF32S
            | Operator::I64TruncF32U
            | Operator::I64TruncF64S
            | Operator::I64TruncF64U
    )
}

/// The failure for `error`, which wasm code (or instantiating it) raised; `memory_bytes` is
/// the module's memory size at that point.
pub(super) fn failure(
    error: &wasmtime::Error,
    sites: &TrapSites,
    memory_bytes: u64,
    limits: ChunkLimits,
) -> Failure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout {
            timeout_ms: limits.timeout_ms,
        },
        Some(&trap) => trap_failure(sites.kind(trap, error), memory_bytes, limits),
        // Not a trap: a resource limit hit while instantiating (a table declared larger than
        // browsers allow).
        None => trap_failure(TrapKind::Other, memory_bytes, limits),
    }
}

/// A trap of `kind`.
pub(super) fn trap_failure(kind: TrapKind, memory_bytes: u64, limits: ChunkLimits) -> Failure {
    Failure::Trap {
        kind,
        memory_bytes,
        limit: limits.memory,
    }
}
