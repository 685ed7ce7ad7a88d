//! The native half of `bench/wasm_vs_native.sh`: times each kernel on the benchmark's inputs
//! with the very code the browser runs ([`KernelBench`]), and prints one JSON line per kernel:
//! `{"kernel": ..., "ms": [...], "digest": ...}`.
//!
//! Usage: `cargo run --release -p grid-worker-wasm --example bench_native -- bench/inputs.json
//! [runs]`.

use std::time::Instant;

use grid_worker_wasm::KernelBench;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: bench_native <inputs.json> [runs]")?;
    let runs: usize = match args.next() {
        Some(text) => text
            .parse()
            .map_err(|_| format!("bad run count {text:?}"))?,
        None => 5,
    };
    let text = std::fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|error| format!("{path}: {error}"))?;
    for case in cases {
        let kernel = case["kernel"].as_str().ok_or("a case without a kernel")?;
        let input = case["input"].to_string();
        let mut bench = KernelBench::parse(kernel, &input)?;
        bench.run(); // warm-up, like the browser side
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            bench.run();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let line = serde_json::json!({
            "kernel": kernel,
            "ms": times,
            "digest": bench.outcome_digest(),
        });
        println!("{line}");
    }
    Ok(())
}
