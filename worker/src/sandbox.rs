//! The sandbox that runs uploaded task modules: wasmtime (Cranelift); raw modules with no
//! imports, WASI command modules with the grid's subset of WASI preview 1.
//!
//! - [`Sandbox`]: the worker's one wasmtime [`Engine`], its WASI linker, and the thread that
//!   ticks its epoch every [`TICK`], which is how a chunk's wall-clock limit interrupts running
//!   code. [`Sandbox::compile`] checks a module against the task ABIs (`grid-task-abi`) and
//!   compiles it into a [`TaskModule`].
//! - [`TaskModule::run`]: one chunk in a fresh [`Store`]: memory cap (linear memory and
//!   tables together, as `grid-task-abi`'s `memory` module documents), deadline, instantiate,
//!   then for a raw module `grid_alloc`, write the input, `grid_run`, read the output.
//! - `wasi`: the same for a WASI command module: standard input, `_start`, standard output.
//! - `traps`: how wasmtime's errors become [`Failure`]s.
//!
//! Every failure becomes an outcome through [`Failure`]'s `Display` (in `grid-task-abi`), never
//! wasmtime's own text: a browser running the same chunk must report the same bytes.
//!
//! Downloading and caching modules is [`crate::module_cache`]'s job; this module only sees
//! bytes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use grid_protocol::{Outcome, OutputMode};
use grid_task_abi::memory::table_element_bytes;
use grid_task_abi::outcome::{in_bounds, input_text, output_outcome, split_result};
use grid_task_abi::{
    Abi, AbiError, Failure, MemoryLimit, ModuleInfo, TrapKind, check_module, limits::MAX_TABLES,
    module_id,
};
use wasmparser::{Parser, Payload};
use wasmtime::{
    Config, Engine, Instance, InstancePre, Linker, Module, ResourceLimiter, Store, UpdateDeadline,
    WasmBacktraceDetails,
};

use traps::{TrapSites, failure, trap_failure};
use wasi::WasiState;

mod traps;
mod wasi;

/// How often the epoch advances: a chunk past its deadline is stopped within about this long.
pub const TICK: Duration = Duration::from_millis(10);

/// Why a module cannot be made ready to run.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// It breaks the task ABI (the master checked it at upload, so this worker and the master
    /// disagree).
    #[error(transparent)]
    Abi(#[from] AbiError),
    /// wasmtime refused a module the ABI check accepted.
    #[error("wasmtime cannot compile the module: {0}")]
    Engine(String),
}

/// The worker's wasmtime engine and its epoch ticker. Cheap to clone; the ticker thread stops
/// when the last clone (and the last [`TaskModule`], which holds one) is dropped.
#[derive(Clone)]
pub struct Sandbox {
    /// Compiles and runs modules; configured for epoch interruption.
    engine: Engine,
    /// The WASI functions a WASI command module links against.
    wasi_linker: Arc<Linker<WasiState>>,
    /// Keeps the ticker thread running while anyone can still run a chunk.
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").finish_non_exhaustive()
    }
}

/// Dropping this ends the ticker thread: its channel disconnects.
#[derive(Debug)]
struct EpochTicker {
    /// Never sent on; only dropped.
    _stop: mpsc::Sender<()>,
}

impl Sandbox {
    /// The engine (Cranelift, epoch interruption, WebAssembly features as wasmtime defaults
    /// them; modules are held to the 2.0 set by the ABI check before they get here, and the
    /// threads proposal is not even built in) and its ticker thread.
    pub fn new() -> Result<Sandbox, std::io::Error> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Backtraces locate a trap's instruction (see `traps`); their DWARF details are
        // never shown, so they are not read, whatever WASMTIME_BACKTRACE_DETAILS says.
        config.wasm_backtrace(true);
        config.wasm_backtrace_details(WasmBacktraceDetails::Disable);
        // One core per compilation: a large module must not take every core of the volunteer's
        // machine (`module_cache` also runs one compilation at a time).
        config.parallel_compilation(false);
        let engine = Engine::new(&config).map_err(std::io::Error::other)?;
        let wasi_linker = Arc::new(wasi::linker(&engine).map_err(std::io::Error::other)?);

        let (stop, stopped) = mpsc::channel::<()>();
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("grid-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    ticking.increment_epoch();
                }
            })?;
        Ok(Sandbox {
            engine,
            wasi_linker,
            _ticker: Arc::new(EpochTicker { _stop: stop }),
        })
    }

    /// Check `bytes` against the task ABI and compile them. Blocking and CPU-heavy (Cranelift
    /// compiles the whole module up front): call it off the async threads.
    pub fn compile(&self, bytes: &[u8]) -> Result<TaskModule, CompileError> {
        let info = check_module(bytes)?;
        let sites = TrapSites::find(bytes).map_err(|error| AbiError::Invalid(error.to_string()))?;
        let table_element_bytes =
            table_element_sizes(bytes).map_err(|error| AbiError::Invalid(error.to_string()))?;
        let module = Module::new(&self.engine, bytes)
            .map_err(|error| CompileError::Engine(format!("{error:#}")))?;
        let kind = match info.abi {
            Abi::Raw => Kind::Raw,
            Abi::Wasi => Kind::Wasi(
                wasi::prepare(&self.wasi_linker, &module)
                    .map_err(|error| CompileError::Engine(format!("{error:#}")))?,
            ),
        };
        Ok(TaskModule {
            id: module_id(bytes),
            module,
            kind,
            info,
            sites,
            table_element_bytes,
            _sandbox: self.clone(),
        })
    }
}

/// The bytes an element of each table the module defines takes, in table order.
fn table_element_sizes(bytes: &[u8]) -> Result<Vec<u64>, wasmparser::BinaryReaderError> {
    let mut sizes = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        if let Payload::TableSection(reader) = payload? {
            for table in reader {
                sizes.push(table_element_bytes(table?.ty.element_type));
            }
        }
    }
    Ok(sizes)
}

/// The per-chunk settings a job makes (`Task::Module`'s `timeout_ms`, `max_memory_mb` and
/// `output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Wall-clock time the chunk may run, instantiation included.
    pub timeout_ms: u32,
    /// The cap on linear memory and tables together.
    pub memory: MemoryLimit,
    /// How the output bytes become the output value.
    pub output: OutputMode,
}

impl ChunkLimits {
    /// Limits of `timeout_ms` and `max_memory_mb` MiB, output read as JSON.
    pub fn new(timeout_ms: u32, max_memory_mb: u32) -> ChunkLimits {
        ChunkLimits {
            timeout_ms,
            memory: MemoryLimit::new(max_memory_mb),
            output: OutputMode::Json,
        }
    }

    /// The same limits with the output read as `output` says.
    pub fn with_output(self, output: OutputMode) -> ChunkLimits {
        ChunkLimits { output, ..self }
    }
}

/// How a compiled module runs.
enum Kind {
    /// The raw ABI: `grid_alloc` and `grid_run`.
    Raw,
    /// A WASI command module, resolved against the sandbox's WASI linker.
    Wasi(InstancePre<WasiState>),
}

/// A compiled module that follows the task ABI, ready to run chunks (any number, on any
/// threads at once: each run gets its own store and instance).
pub struct TaskModule {
    /// Its id (`sha256:<hex>`), which seeds WASI programs' random streams.
    id: String,
    /// Compiled code.
    module: Module,
    /// Which ABI it follows.
    kind: Kind,
    /// Its memory as declared (for the start-up memory check).
    info: ModuleInfo,
    /// Where its traps need a closer look.
    sites: TrapSites,
    /// Bytes per element of each table it defines, in table order (wasmtime creates them in
    /// that order).
    table_element_bytes: Vec<u64>,
    /// Keeps the epoch ticking while this module can run.
    _sandbox: Sandbox,
}

impl std::fmt::Debug for TaskModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskModule")
            .field("id", &self.id)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A store's data: the chunk's cap on memory and tables, enforced as `grid-task-abi`'s
/// `memory` module documents. wasmtime asks the limiter before it creates each memory and
/// table of an instance (from size 0 to its initial size) and before every grow, so the sums
/// below are everything the store's memories and tables hold.
struct ChunkState {
    /// The job's cap.
    limit: MemoryLimit,
    /// Bytes of all linear memories of the store.
    memory_bytes: u64,
    /// Bytes of all tables of the store.
    table_bytes: u64,
    /// Memories wasmtime has yet to create (the ABI allows exactly one).
    memories_to_create: u32,
    /// Bytes per element of the tables wasmtime has yet to create, next first.
    tables_to_create: VecDeque<u64>,
    /// The limiter refused a memory or a table while the instance was being created: the
    /// module is over the cap at start (the start-up check should have caught it first).
    refused_at_start: bool,
}

impl ChunkState {
    fn new(limit: MemoryLimit, table_element_bytes: &[u64]) -> ChunkState {
        ChunkState {
            limit,
            memory_bytes: 0,
            table_bytes: 0,
            memories_to_create: 1,
            tables_to_create: table_element_bytes.iter().copied().collect(),
            refused_at_start: false,
        }
    }

    /// Whether the store may hold `memory_bytes` of memory and `table_bytes` of tables; if so,
    /// they are its new sums.
    fn take(&mut self, memory_bytes: u64, table_bytes: u64) -> bool {
        if self.limit.allows(memory_bytes.saturating_add(table_bytes)) {
            self.memory_bytes = memory_bytes;
            self.table_bytes = table_bytes;
            true
        } else {
            false
        }
    }
}

/// Bytes as a `u64` (`usize` is never wider on the platforms wasmtime runs on).
fn wide(bytes: usize) -> u64 {
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

impl ResourceLimiter for ChunkState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let creating = self.memories_to_create > 0;
        self.memories_to_create = self.memories_to_create.saturating_sub(1);
        let memory_bytes =
            (self.memory_bytes.saturating_sub(wide(current))).saturating_add(wide(desired));
        // `false` makes `memory.grow` return -1, exactly what a browser does for a module
        // whose declared maximum is what the tables leave of the cap.
        let allowed = self.take(memory_bytes, self.table_bytes);
        self.refused_at_start |= creating && !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let Some(element_bytes) = self.tables_to_create.pop_front() else {
            // A `table.grow` (wasmtime does not ask for a grow by 0): tables keep the size
            // they start with, as in a browser, where that is their declared maximum.
            return Ok(desired <= current);
        };
        let table_bytes = self
            .table_bytes
            .saturating_add(wide(desired).saturating_mul(element_bytes));
        let allowed = self.take(self.memory_bytes, table_bytes);
        self.refused_at_start |= !allowed;
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }
}

impl TaskModule {
    /// Run one chunk. Blocks for up to about `limits.timeout_ms`; call it off the async threads.
    pub fn run(&self, input: &serde_json::Value, limits: ChunkLimits) -> Outcome {
        if let Err(failure) = limits.memory.check_start(&self.info) {
            return failure.into();
        }
        match &self.kind {
            Kind::Wasi(pre) => wasi::run(self, pre, input, limits),
            Kind::Raw => match self.try_run(input, limits) {
                Ok(outcome) => outcome,
                Err(failure) => failure.into(),
            },
        }
    }

    /// Which ABI the module follows.
    pub fn abi(&self) -> Abi {
        self.info.abi
    }

    fn try_run(&self, input: &serde_json::Value, limits: ChunkLimits) -> Result<Outcome, Failure> {
        let mut store = Store::new(
            self.module.engine(),
            ChunkState::new(limits.memory, &self.table_element_bytes),
        );
        store.limiter(|state| state);
        arm_deadline(&mut store, limits.timeout_ms);

        // Traps inside a start function: no engine hands out a memory of a failed
        // instantiation, so both workers report the memory the module starts with.
        let instance = Instance::new(&mut store, &self.module, &[]).map_err(|error| {
            if store.data().refused_at_start {
                Failure::MemoryAtStart {
                    memory_bytes: self.info.initial_bytes(),
                    table_bytes: self.info.initial_table_bytes,
                    limit: limits.memory,
                }
            } else {
                failure(&error, &self.sites, self.info.initial_bytes(), limits)
            }
        })?;
        let (Some(memory), Ok(alloc), Ok(run)) = (
            instance.get_memory(&mut store, "memory"),
            instance.get_typed_func::<i32, i32>(&mut store, "grid_alloc"),
            instance.get_typed_func::<(i32, i32), i64>(&mut store, "grid_run"),
        ) else {
            // `check_module` has seen these exports with these types; this cannot happen.
            return Err(trap_failure(TrapKind::Other, 0, limits));
        };
        let trapped = |store: &Store<ChunkState>, error: wasmtime::Error| {
            failure(&error, &self.sites, memory.data_size(store) as u64, limits)
        };

        let text = input_text(input);
        let Ok(len) = u32::try_from(text.len()) else {
            // Over 4 GiB of input cannot fit a 32-bit memory anyway.
            return Err(Failure::AllocOutOfBounds {
                ptr: 0,
                len: u32::MAX,
                memory_bytes: memory.data_size(&store) as u64,
            });
        };
        // The ABI's i32s are unsigned addresses and lengths: reinterpret, never sign-extend.
        let ptr = alloc
            .call(&mut store, len as i32)
            .map_err(|error| trapped(&store, error))? as u32;
        let memory_bytes = memory.data_size(&store) as u64;
        if !in_bounds(ptr, len, memory_bytes) {
            return Err(Failure::AllocOutOfBounds {
                ptr,
                len,
                memory_bytes,
            });
        }
        if memory
            .write(&mut store, ptr as usize, text.as_bytes())
            .is_err()
        {
            // `in_bounds` said it fits; kept as a failure rather than a panic all the same.
            return Err(Failure::AllocOutOfBounds {
                ptr,
                len,
                memory_bytes,
            });
        }

        let packed = run
            .call(&mut store, (ptr as i32, len as i32))
            .map_err(|error| trapped(&store, error))?;
        let (out_ptr, out_len) = split_result(packed);
        let data = memory.data(&store);
        let out_of_bounds = Failure::OutputOutOfBounds {
            ptr: out_ptr,
            len: out_len,
            memory_bytes: data.len() as u64,
        };
        if !in_bounds(out_ptr, out_len, data.len() as u64) {
            return Err(out_of_bounds);
        }
        let output = data
            .get(out_ptr as usize..out_ptr as usize + out_len as usize)
            .ok_or(out_of_bounds)?;
        Ok(output_outcome(output, limits.output))
    }
}

/// Stop `store`'s code once `timeout_ms` have passed from now. The deadline covers
/// instantiation too: a start function runs then. Checking the clock at every tick (instead
/// of trapping after a fixed number of ticks) means a chunk is never stopped early, however
/// late the ticker thread gets scheduled.
fn arm_deadline<T: 'static>(store: &mut Store<T>, timeout_ms: u32) {
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(1)
        })
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// A module following the ABI: memory of `memory` pages, a bump allocator from 1024, and
    /// `body` as `grid_run` (params `$ptr`, `$len`), plus `extra` fields.
    fn module(memory: &str, body: &str, extra: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 (memory (export "memory") {memory})
                 (global $next (mut i32) (i32.const 1024))
                 (func (export "grid_alloc") (param $len i32) (result i32)
                   (local $at i32)
                   (local.set $at (global.get $next))
                   (global.set $next (i32.add (global.get $next) (local.get $len)))
                   (local.get $at))
                 (func (export "grid_run") (param $ptr i32) (param $len i32) (result i64)
                   {body})
                 {extra})"#
        ))
        .unwrap()
    }

    /// `(ptr << 32) | len` in WAT.
    const ECHO: &str = "(i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                                (i64.extend_i32_u (local.get $len)))";

    fn compile(sandbox: &Sandbox, wasm: &[u8]) -> TaskModule {
        sandbox.compile(wasm).unwrap()
    }

    fn err(outcome: Outcome) -> String {
        match outcome {
            Outcome::Err(message) => message,
            other => panic!("expected an error outcome, got {other:?}"),
        }
    }

    #[test]
    fn an_echo_module_returns_its_input() {
        let sandbox = Sandbox::new().unwrap();
        let echo = compile(&sandbox, &module("1", ECHO, ""));
        let outcome = echo.run(
            &json!({"b": [1, 2.5, "x"], "a": null}),
            ChunkLimits::new(1000, 16),
        );
        assert_eq!(outcome, Outcome::Ok(json!({"a": null, "b": [1, 2.5, "x"]})));
    }

    #[test]
    fn an_endless_loop_times_out_and_the_sandbox_goes_on() {
        let sandbox = Sandbox::new().unwrap();
        let endless = compile(&sandbox, &module("1", "(loop $l (br $l)) unreachable", ""));
        let started = Instant::now();
        let outcome = endless.run(&json!(1), ChunkLimits::new(200, 16));
        let took = started.elapsed();
        assert_eq!(err(outcome), "timeout: the chunk ran longer than 200 ms");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");

        let echo = compile(&sandbox, &module("1", ECHO, ""));
        assert_eq!(
            echo.run(&json!([1]), ChunkLimits::new(1000, 16)),
            Outcome::Ok(json!([1]))
        );
        // The looping module itself is fine to run again.
        assert_eq!(
            err(endless.run(&json!(2), ChunkLimits::new(50, 16))),
            "timeout: the chunk ran longer than 50 ms"
        );
    }

    #[test]
    fn a_looping_start_function_times_out() {
        let sandbox = Sandbox::new().unwrap();
        let wasm = module("1", ECHO, "(func $spin (loop $l (br $l))) (start $spin)");
        let outcome = compile(&sandbox, &wasm).run(&json!(1), ChunkLimits::new(100, 16));
        assert_eq!(err(outcome), "timeout: the chunk ran longer than 100 ms");
    }

    #[test]
    fn memory_stops_growing_at_the_cap() {
        let sandbox = Sandbox::new().unwrap();
        // Grow a page at a time until memory.grow says no, then give up like an allocator.
        let greedy = module(
            "1",
            "(block $full (loop $more
               (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
               (br $more)))
             unreachable",
            "",
        );
        let outcome = compile(&sandbox, &greedy).run(&json!(null), ChunkLimits::new(5000, 16));
        assert_eq!(
            err(outcome),
            "trap: unreachable instruction executed (memory in use: 16 of 16 MiB)"
        );

        // One grow past the cap fails as a whole (-1); the module carries on.
        let leap = module(
            "1",
            "(if (i32.ne (memory.grow (i32.const 1024)) (i32.const -1)) (then unreachable))
             (i64.const 0x100000009)",
            r#"(data (i32.const 1) "\"refused\"")"#,
        );
        assert_eq!(
            compile(&sandbox, &leap).run(&json!(null), ChunkLimits::new(5000, 32)),
            Outcome::Ok(json!("refused"))
        );
    }

    #[test]
    fn initial_memory_over_the_cap_is_not_run() {
        let sandbox = Sandbox::new().unwrap();
        let big = compile(&sandbox, &module("40", ECHO, ""));
        assert_eq!(
            err(big.run(&json!(1), ChunkLimits::new(1000, 2))),
            "memory limit exceeded: the module needs 3 MiB at start; the limit is 2 MiB"
        );
        assert_eq!(
            big.run(&json!(1), ChunkLimits::new(1000, 3)),
            Outcome::Ok(json!(1))
        );
    }

    #[test]
    fn tables_count_against_the_cap() {
        let sandbox = Sandbox::new().unwrap();
        // The review's table bomb, with the four tables the ABI allows: 320 MB of funcrefs.
        let tables: String = (0..4)
            .map(|i| format!("(table $t{i} 10000000 funcref)"))
            .collect();
        let fills: String = (0..4)
            .map(|i| format!("(table.fill $t{i} (i32.const 0) (ref.func $f) (i32.const 10000000))"))
            .collect();
        let bomb = module(
            "1",
            &format!("{fills} (i64.const 0)"),
            &format!("{tables} (func $f) (elem declare func $f)"),
        );
        assert_eq!(
            err(compile(&sandbox, &bomb).run(&json!(1), ChunkLimits::new(5000, 16))),
            "memory limit exceeded: the module needs 306 MiB at start (65536 bytes of memory, \
             320000000 bytes of tables); the limit is 16 MiB"
        );

        // Tables do not grow, whatever they declare, and the module carries on.
        let growing = module(
            "1",
            "(if (i32.ne (table.grow $t (ref.null func) (i32.const 1)) (i32.const -1))
               (then unreachable))
             (if (i32.ne (table.grow $t (ref.null func) (i32.const 0)) (i32.const 10))
               (then unreachable))
             (i64.const 0x100000009)",
            r#"(table $t 10 100 funcref) (data (i32.const 1) "\"refused\"")"#,
        );
        assert_eq!(
            compile(&sandbox, &growing).run(&json!(null), ChunkLimits::new(5000, 16)),
            Outcome::Ok(json!("refused"))
        );

        // Memory gets what the tables leave: 2 MiB less 1,000,000 bytes is 16 pages.
        let greedy = module(
            "1",
            "(block $full (loop $more
               (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
               (br $more)))
             (if (i32.ne (memory.size) (i32.const 16)) (then unreachable))
             (i64.const 0x100000009)",
            r#"(table 125000 funcref) (data (i32.const 1) "\"16pages\"")"#,
        );
        assert_eq!(
            compile(&sandbox, &greedy).run(&json!(null), ChunkLimits::new(5000, 2)),
            Outcome::Ok(json!("16pages"))
        );
    }

    #[test]
    fn the_limiter_sums_every_memory_and_table() {
        let mut state = ChunkState::new(MemoryLimit::new(1), &[8, 4]);
        // Creation: memory of 8 pages, tables of 32,768 funcrefs and 65,536 externrefs.
        assert!(state.memory_growing(0, 8 << 16, None).unwrap());
        assert!(state.table_growing(0, 32_768, None).unwrap());
        assert!(!state.refused_at_start);
        // 512 KiB + 256 KiB + 256 KiB = the whole MiB: the second table just fits.
        assert!(state.table_growing(0, 65_536, None).unwrap());
        assert_eq!(state.memory_bytes + state.table_bytes, 1 << 20);
        // Nothing more grows: not the memory, not the tables.
        assert!(!state.memory_growing(8 << 16, 9 << 16, None).unwrap());
        assert!(!state.table_growing(32_768, 32_769, None).unwrap());
        assert!(!state.refused_at_start);

        // A table over what is left at creation marks the module as over the cap at start.
        let mut state = ChunkState::new(MemoryLimit::new(1), &[8]);
        assert!(state.memory_growing(0, 16 << 16, None).unwrap());
        assert!(!state.table_growing(0, 1, None).unwrap());
        assert!(state.refused_at_start);
    }

    #[test]
    fn traps_have_fixed_texts() {
        let sandbox = Sandbox::new().unwrap();
        let limits = ChunkLimits::new(1000, 64);
        for (body, extra, expected) in [
            (
                "unreachable",
                "",
                "trap: unreachable instruction executed (memory in use: 1 of 64 MiB)",
            ),
            (
                "(drop (i32.div_u (i32.const 1) (i32.sub (local.get $len) (local.get $len)))) (i64.const 0)",
                "",
                "trap: integer divide by zero (memory in use: 1 of 64 MiB)",
            ),
            (
                "(drop (i32.div_s (i32.const 0x80000000) (i32.const -1))) (i64.const 0)",
                "",
                "trap: integer overflow (memory in use: 1 of 64 MiB)",
            ),
            (
                "(drop (i32.load (i32.const 0x7fffffff))) (i64.const 0)",
                "",
                "trap: out of bounds memory access (memory in use: 1 of 64 MiB)",
            ),
            (
                "(drop (i32.trunc_f64_s (f64.const 1e100))) (i64.const 0)",
                "",
                "trap: invalid conversion to integer (memory in use: 1 of 64 MiB)",
            ),
            (
                "(drop (i64.trunc_f32_u (f32.const nan))) (i64.const 0)",
                "",
                "trap: invalid conversion to integer (memory in use: 1 of 64 MiB)",
            ),
            (
                "(drop (i64.div_s (i64.const 0x8000000000000000) (i64.const -1))) (call $trunc)",
                "(func $trunc (result i64) (i64.trunc_f64_s (f64.const -1e300)))",
                "trap: integer overflow (memory in use: 1 of 64 MiB)",
            ),
            (
                "(call $trunc)",
                "(func $trunc (result i64) (i64.trunc_f64_s (f64.const -1e300)))",
                "trap: invalid conversion to integer (memory in use: 1 of 64 MiB)",
            ),
            (
                "(call_indirect (type $t) (i32.const 0)) (i64.const 0)",
                "(type $t (func)) (table 1 funcref)",
                "trap: indirect call to a null or mismatched function (memory in use: 1 of 64 MiB)",
            ),
            (
                "(call $down) (i64.const 0)",
                "(func $down (call $down))",
                "trap: call stack exhausted (memory in use: 1 of 64 MiB)",
            ),
        ] {
            let outcome = compile(&sandbox, &module("1", body, extra)).run(&json!("x"), limits);
            assert_eq!(err(outcome), expected, "{body}");
        }

        // Memory grown before the trap is what the message reports.
        let grown = module("1", "(drop (memory.grow (i32.const 47))) unreachable", "");
        assert_eq!(
            err(compile(&sandbox, &grown).run(&json!(1), limits)),
            "trap: unreachable instruction executed (memory in use: 3 of 64 MiB)"
        );
        // A trap in a start function reports the memory the module starts with.
        let at_start = module("2", ECHO, "(func $boom unreachable) (start $boom)");
        assert_eq!(
            err(compile(&sandbox, &at_start).run(&json!(1), limits)),
            "trap: unreachable instruction executed (memory in use: 1 of 64 MiB)"
        );
    }

    #[test]
    fn bad_outputs_have_fixed_texts() {
        let sandbox = Sandbox::new().unwrap();
        let limits = ChunkLimits::new(1000, 16);
        let returning = |data: &str, packed: &str| {
            let wasm = module(
                "1",
                &format!("(i64.const {packed})"),
                &format!(r#"(data (i32.const 16) "{data}")"#),
            );
            compile(&sandbox, &wasm).run(&json!(1), limits)
        };
        // 5 bytes at 16: "{nope".
        let at_16 = (16_i64 << 32) | 5;
        assert_eq!(
            err(returning("{nope", &at_16.to_string())),
            "bad output: not JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(
            err(returning("\\ff\\fe\\00\\00\\00", &at_16.to_string())),
            "bad output: not UTF-8 text"
        );
        assert_eq!(
            err(returning("", &((65_536_i64 << 32) | 10).to_string())),
            "bad output: grid_run returned 10 bytes at 65536, outside the 65536-byte memory"
        );
        // A negative i64 is a pointer and a length near 4 GiB, not an error code.
        assert_eq!(
            err(returning("", "-1")),
            "bad output: grid_run returned 4294967295 bytes at 4294967295, outside the 65536-byte memory"
        );
        assert_eq!(
            returning("[7]", &((16_i64 << 32) | 3).to_string()),
            Outcome::Ok(json!([7]))
        );

        let bad_alloc = wat::parse_str(
            r#"(module
                 (memory (export "memory") 1)
                 (func (export "grid_alloc") (param i32) (result i32) (i32.const 65534))
                 (func (export "grid_run") (param i32 i32) (result i64) (i64.const 0)))"#,
        )
        .unwrap();
        assert_eq!(
            err(compile(&sandbox, &bad_alloc).run(&json!("abc"), limits)),
            "bad input buffer: grid_alloc(5) returned 65534, outside the 65536-byte memory"
        );
    }

    #[test]
    fn modules_breaking_the_abi_are_not_compiled() {
        let sandbox = Sandbox::new().unwrap();
        let import = wat::parse_str(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1))"#,
        )
        .unwrap();
        assert!(matches!(
            sandbox.compile(&import),
            Err(CompileError::Abi(AbiError::Import { .. }))
        ));
        assert!(matches!(
            sandbox.compile(b"\0asm\x01\0\0\0garbage"),
            Err(CompileError::Abi(AbiError::Invalid(_)))
        ));
    }

    #[test]
    fn chunks_of_one_module_run_on_many_threads() {
        let sandbox = Sandbox::new().unwrap();
        let echo = Arc::new(compile(&sandbox, &module("1", ECHO, "")));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let echo = Arc::clone(&echo);
                std::thread::spawn(move || echo.run(&json!({"i": i}), ChunkLimits::new(1000, 16)))
            })
            .collect();
        for (i, thread) in threads.into_iter().enumerate() {
            assert_eq!(thread.join().unwrap(), Outcome::Ok(json!({"i": i})));
        }
    }
}
