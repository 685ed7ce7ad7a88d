//! The native half of `bench/modules.sh`: what running a task module under the worker's
//! sandbox ([`Sandbox`], wasmtime with Cranelift) costs against the same Rust compiled
//! natively.
//!
//! - Throughput: one Collatz chunk (`example-collatz`) computed by the crate itself, linked in
//!   natively, and by `collatz.wasm` through [`TaskModule::run`], in alternating rounds so
//!   background load hits both alike; medians, minimums and the ratio wasm/native. The two
//!   outputs must be the same JSON. A third side, for diagnosis only, runs the module in a
//!   wasmtime engine of its own without epoch interruption ([`PlainWasmtime`]): the
//!   difference to the sandbox is what the wall-clock limit's checks cost.
//! - Fixed costs: compiling `collatz.wasm` ([`Sandbox::compile`]: ABI check and Cranelift),
//!   and one chunk of a module that does nothing (an echo module, WAT) or almost nothing
//!   (`collatz.wasm` on a range of one number): a fresh store and instance, `grid_alloc`, the
//!   input written, `grid_run`, the output read and parsed, as for every chunk a worker runs;
//!   and, for diagnosis, the echo module in [`PlainWasmtime`].
//!
//! Usage (`bench/modules.sh` builds and runs it):
//!
//! ```text
//! module_bench COLLATZ_WASM [--rounds 7] [--chunks 2000] [--start 1 --end 500001]
//! module_bench COLLATZ_WASM --once     # one native and one wasmtime run, as a JSON line
//! ```
//!
//! `--once` is for `bench/modules.mjs`, which puts headless Chromium between the rounds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use example_collatz::{Range, longest_chain};
use grid_protocol::Outcome;
use grid_task_abi::outcome::split_result;
use grid_worker::Sandbox;
use grid_worker::sandbox::{ChunkLimits, TaskModule};
use serde_json::{Value, json};
use wasmtime::{Engine, Instance, Module, Store};

/// Limits for every chunk: far above what the chunks need, so the sandbox never stops one.
const LIMITS: ChunkLimits = ChunkLimits {
    timeout_ms: 600_000,
    memory: grid_task_abi::MemoryLimit { mb: 256 },
    output: grid_protocol::OutputMode::Json,
};

/// The smallest module that follows the task ABI: its output is its input. Its cost per chunk
/// is the sandbox's alone.
const ECHO_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "grid_alloc") (param $len i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $at))
  (func (export "grid_run") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len)))))"#;

/// Times task modules in the worker's sandbox against native Rust.
#[derive(Debug, Parser)]
struct Args {
    /// `collatz.wasm`, as `cargo xtask modules` builds it.
    collatz_wasm: PathBuf,
    /// Alternating rounds of each measurement (medians are reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Chunks per round in the fixed-cost measurement.
    #[arg(long, default_value_t = 2000)]
    chunks: u32,
    /// First number of the Collatz chunk.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// One past the last number of the Collatz chunk (a chunk holds at most 1,000,000
    /// numbers; 500,000 take about 0.2 s natively).
    #[arg(long, default_value_t = 500_001)]
    end: u64,
    /// One native and one wasmtime run of the Collatz chunk, printed as a JSON line
    /// `{"native_ms", "wasmtime_ms", "compile_ms", "output"}`.
    #[arg(long)]
    once: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rounds == 0 || args.chunks == 0 {
        bail!("--rounds and --chunks must be at least 1");
    }
    let bytes = std::fs::read(&args.collatz_wasm)
        .with_context(|| format!("reading {}", args.collatz_wasm.display()))?;
    let sandbox = Sandbox::new().context("starting the sandbox")?;
    let range = Range {
        start: args.start,
        end: args.end,
    };
    let input = json!({"start": args.start, "end": args.end});

    let started = Instant::now();
    let collatz = sandbox
        .compile(&bytes)
        .with_context(|| format!("compiling {}", args.collatz_wasm.display()))?;
    let first_compile = started.elapsed();

    if args.once {
        let (native, output) = time_native(range)?;
        let (wasm, wasm_output) = time_wasm(&collatz, &input)?;
        same_output(&output, &wasm_output)?;
        let line = json!({
            "native_ms": ms(native),
            "wasmtime_ms": ms(wasm),
            "compile_ms": ms(first_compile),
            "output": output,
        });
        println!("{line}");
        return Ok(());
    }

    println!(
        "Collatz chunk {} ({} numbers): {} alternating rounds after a warm-up",
        grid_task_abi::outcome::input_text(&input),
        args.end.saturating_sub(args.start),
        args.rounds
    );
    // Warm-up: page in the code and the caches of both sides.
    let (_, output) = time_native(range)?;
    same_output(&output, &time_wasm(&collatz, &input)?.1)?;
    let plain = PlainWasmtime::new(&bytes)?;
    same_output(&output, &plain.run(&input)?.1)?;
    let mut native_times = Vec::with_capacity(args.rounds);
    let mut wasm_times = Vec::with_capacity(args.rounds);
    let mut plain_times = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        native_times.push(time_native(range)?.0);
        wasm_times.push(time_wasm(&collatz, &input)?.0);
        plain_times.push(plain.run(&input)?.0);
    }
    let (native, wasm) = (Stats::of(&native_times), Stats::of(&wasm_times));
    let plain_stats = Stats::of(&plain_times);
    println!(
        "  native (example-collatz linked in, release)  median {:8.1} ms   min {:8.1} ms",
        ms(native.median),
        ms(native.min)
    );
    println!(
        "  wasmtime (collatz.wasm, TaskModule::run)     median {:8.1} ms   min {:8.1} ms",
        ms(wasm.median),
        ms(wasm.min)
    );
    println!(
        "  ratio wasm/native                            median {:8.2}×     min {:8.2}×",
        ratio(wasm.median, native.median),
        ratio(wasm.min, native.min)
    );
    println!(
        "  diagnosis: wasmtime without epoch checks    median {:8.1} ms   min {:8.1} ms  \
         ({:.2}× native)",
        ms(plain_stats.median),
        ms(plain_stats.min),
        ratio(plain_stats.median, native.median)
    );
    println!("  output (identical on all sides): {output}");

    // Compiling the same bytes again does the full work every time: the workspace builds
    // wasmtime without its on-disk compilation cache (the worker keeps compiled modules in
    // `ModuleCache` instead).
    let mut compiles = vec![first_compile];
    for _ in 1..args.rounds.min(5) {
        let started = Instant::now();
        let _ = sandbox.compile(&bytes)?;
        compiles.push(started.elapsed());
    }
    let compile = Stats::of(&compiles);
    println!(
        "\nCompiling collatz.wasm ({} bytes; ABI check + Cranelift, Sandbox::compile), {} times: \
         median {:.1} ms, min {:.1} ms",
        bytes.len(),
        compiles.len(),
        ms(compile.median),
        ms(compile.min)
    );

    let echo_bytes = wat::parse_str(ECHO_WAT).context("assembling the echo module")?;
    let echo = sandbox
        .compile(&echo_bytes)
        .context("compiling the echo module")?;
    let plain_echo = PlainWasmtime::new(&echo_bytes)?;
    let small = json!({"start": 27, "end": 28});
    let kinds: [(&str, ChunkFn<'_>); 3] = [
        (
            "echo module (WAT, one page of memory)",
            Box::new(|| run_ok(&echo, &small)),
        ),
        (
            "collatz.wasm, a range of one number",
            Box::new(|| run_ok(&collatz, &small)),
        ),
        (
            "diagnosis: echo, plain wasmtime engine",
            Box::new(|| plain_echo.run(&small).map(drop)),
        ),
    ];
    println!(
        "\nCost of one chunk (fresh instance, grid_alloc, input in, grid_run, output out and \
         parsed), {} chunks × {} alternating rounds, input {}:",
        args.chunks,
        args.rounds,
        grid_task_abi::outcome::input_text(&small)
    );
    let mut per_chunk: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for (_, chunk) in &kinds {
        time_chunks(chunk, args.chunks.min(100))?; // warm-up
    }
    for _ in 0..args.rounds {
        for (times, (_, chunk)) in per_chunk.iter_mut().zip(&kinds) {
            times.push(time_chunks(chunk, args.chunks)? / args.chunks);
        }
    }
    for (times, (name, _)) in per_chunk.iter().zip(&kinds) {
        let stats = Stats::of(times);
        println!(
            "  {name:<40} median {:7.1} µs   min {:7.1} µs",
            us(stats.median),
            us(stats.min)
        );
    }
    Ok(())
}

/// The chunk computed natively; its output as the module would give it.
fn time_native(range: Range) -> Result<(Duration, Value)> {
    let started = Instant::now();
    let answer = std::hint::black_box(longest_chain(std::hint::black_box(range)));
    let took = started.elapsed();
    let answer = answer.map_err(|error| anyhow::anyhow!("the native chunk failed: {error}"))?;
    Ok((took, serde_json::to_value(answer)?))
}

/// The chunk run by the sandbox, as the worker runs it.
fn time_wasm(module: &TaskModule, input: &Value) -> Result<(Duration, Value)> {
    let started = Instant::now();
    let outcome = module.run(input, LIMITS);
    let took = started.elapsed();
    match outcome {
        Outcome::Ok(output) => Ok((took, output)),
        other => bail!("the module's chunk failed: {other:?}"),
    }
}

/// `collatz.wasm` in a wasmtime engine with the default configuration: no epoch
/// interruption, no memory limiter. Not how the worker runs modules; it only tells how much
/// of the sandbox's time goes to the checks that enforce the time limit.
struct PlainWasmtime {
    /// Its own engine, default configuration (Cranelift).
    engine: Engine,
    /// The module, compiled by that engine.
    module: Module,
}

impl PlainWasmtime {
    fn new(bytes: &[u8]) -> Result<PlainWasmtime> {
        let engine = Engine::default();
        let module = Module::new(&engine, bytes)?;
        Ok(PlainWasmtime { engine, module })
    }

    /// One chunk, the task ABI as `TaskModule::run` follows it, minus its limits and checks.
    fn run(&self, input: &Value) -> Result<(Duration, Value)> {
        let text = grid_task_abi::outcome::input_text(input);
        let started = Instant::now();
        let mut store = Store::new(&self.engine, ());
        let instance = Instance::new(&mut store, &self.module, &[])?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .context("no memory export")?;
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "grid_alloc")?;
        let run = instance.get_typed_func::<(i32, i32), i64>(&mut store, "grid_run")?;
        let len = i32::try_from(text.len())?;
        let ptr = alloc.call(&mut store, len)?;
        memory.write(&mut store, ptr as u32 as usize, text.as_bytes())?;
        let (out_ptr, out_len) = split_result(run.call(&mut store, (ptr, len))?);
        let (out_ptr, out_len) = (out_ptr as usize, out_len as usize);
        let output = memory
            .data(&store)
            .get(out_ptr..out_ptr + out_len)
            .context("the output is outside the memory")?;
        let output = serde_json::from_slice(output)?;
        Ok((started.elapsed(), output))
    }
}

/// One chunk of some kind, which must succeed.
type ChunkFn<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// One chunk of `module` in the sandbox; an error if it fails.
fn run_ok(module: &TaskModule, input: &Value) -> Result<()> {
    match module.run(input, LIMITS) {
        Outcome::Ok(_) => Ok(()),
        Outcome::Err(error) => bail!("a chunk failed: {error}"),
    }
}

/// `chunks` chunks, one after the other.
fn time_chunks(chunk: &ChunkFn<'_>, chunks: u32) -> Result<Duration> {
    let started = Instant::now();
    for _ in 0..chunks {
        chunk()?;
    }
    Ok(started.elapsed())
}

fn same_output(native: &Value, wasm: &Value) -> Result<()> {
    if native != wasm {
        bail!("native and wasm outputs differ: {native} against {wasm}");
    }
    Ok(())
}

/// Median and minimum of some timings.
#[derive(Debug, Clone, Copy)]
struct Stats {
    median: Duration,
    min: Duration,
}

impl Stats {
    /// `times` must not be empty (every caller has at least one round).
    fn of(times: &[Duration]) -> Stats {
        let mut sorted = times.to_vec();
        sorted.sort();
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2
        };
        Stats {
            median,
            min: sorted[0],
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
