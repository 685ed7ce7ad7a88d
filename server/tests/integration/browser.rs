//! The contribute page end to end: the master in-process on a fresh database, the page in
//! headless Chromium (Debian's chromium driven by playwright-core, `frontend/tests/browser.mjs`),
//! and for the mixed test a real `grid-worker` process.
//!
//! - two browser volunteers compute a `primes` job alone and get the right total;
//! - one of three volunteers closes its tab mid-job and the job still completes;
//! - a browser and a native worker agree on every chunk of `primes`, `mandelbrot` and `sha256`
//!   jobs (bit-identical outputs across wasm and native);
//! - a browser and a native worker agree on every chunk of task-module jobs: the example
//!   modules (Rust and WAT, from `<target>/task-modules/`) and a module whose inputs pick each
//!   way a chunk can fail (traps, the memory cap, bad outputs, the time limit), so their error
//!   outcomes are byte-identical across V8 and wasmtime;
//! - a browser and a native worker agree byte for byte on WASI command modules: the C, Rust
//!   and Zig example programs (the clock and random bytes included), a probe of every function
//!   of the WASI subset, and the hostile programs (a file, a socket, an endless loop, exit 3,
//!   100 MiB of standard output), whose failures are the same text in both;
//! - hostile modules (an endless loop, unbounded memory growth, a trap) fail cleanly in the
//!   browser alone, and the page goes on to complete module and kernel jobs beside them;
//! - table bombs (declared and growing) under a 16 MiB cap grow the peak resident memory of
//!   Chromium's processes by no more than the cap per thread and a small slack, fail with the
//!   native worker's texts, and the page goes on computing;
//! - a module chunk whose lease is revoked while it runs is stopped and its slot goes on to
//!   other work; pausing while one runs stops it and hands its lease back;
//! - the page shows the master going away, reconnects by itself when it is back, and computes;
//! - the page's headers (types, caching, CSP) and the `Origin` check of `/ws`.
//!
//! These tests need the web build (`frontend/dist`), Chromium, Node and `playwright-core`, and
//! the module tests the example modules. `cargo xtask test` provides all of them; without them
//! the tests fail, saying so.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::modules::{echo, endless_loop, example, memory_hog, table_bomb, trap};
use common::{
    ADMIN_TOKEN, Api, Backend, Home, InProcessServer, Peer, primes_inputs, primes_reference,
    primes_total, spawn_server_process, spawn_worker,
};
use grid_server::{ServeOptions, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// How long one browser scenario may take, end to end.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(420);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What the browser tests run with. Missing pieces fail the test with what to do.
struct Tools {
    node: String,
    script: PathBuf,
    chromium: String,
}

const ADVICE: &str = "run `cargo xtask test`, which builds the page before the server and \
                      installs the browser tools";

/// The web build must exist: fail (not skip) without it.
fn require_web_build() {
    assert!(
        repo_root().join("frontend/dist/index.html").exists(),
        "the contribute page is not built (frontend/dist/index.html is missing): {ADVICE}"
    );
}

impl Tools {
    fn find() -> Tools {
        let root = repo_root();
        let advice = ADVICE;
        require_web_build();
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists(),
            "Chromium is missing ({chromium}): {advice}"
        );
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let version = std::process::Command::new(&node).arg("--version").output();
        assert!(
            version.is_ok_and(|out| out.status.success()),
            "Node.js is missing (`{node} --version` failed): {advice}"
        );
        assert!(
            root.join("frontend/node_modules/playwright-core/package.json")
                .exists(),
            "playwright-core is not installed in frontend/node_modules: {advice}"
        );
        Tools {
            node,
            script: root.join("frontend/tests/browser.mjs"),
            chromium,
        }
    }

    /// The master must serve the page, not the "not built" placeholder.
    async fn check_served(&self, base: &str) {
        let response = reqwest::get(format!("{base}/")).await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            200,
            "the master does not serve the contribute page (it was compiled without \
             frontend/dist): run `cargo xtask test`, which builds the page before the server"
        );
    }

    /// Run a scenario of browser.mjs against `server` for `jobs`; its JSON summary.
    async fn run(&self, scenario: &str, server: &InProcessServer, jobs: &[i64]) -> Value {
        let ids: Vec<String> = jobs.iter().map(i64::to_string).collect();
        let child = tokio::process::Command::new(&self.node)
            .arg(&self.script)
            .args([scenario, &server.http(), ADMIN_TOKEN, &ids.join(",")])
            .env("CHROMIUM", &self.chromium)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", self.node));
        let output = tokio::time::timeout(SCENARIO_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("browser scenario {scenario} ran over {SCENARIO_TIMEOUT:?}"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "browser scenario {scenario} failed ({}); see its log above. stdout: {stdout}",
            output.status
        );
        let summary: Value = stdout
            .lines()
            .last()
            .and_then(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("no JSON summary from browser.mjs: {stdout}"));
        assert_eq!(summary["ok"], true, "{summary}");
        summary
    }
}

/// Read stdout lines of browser.mjs until `expected` (bounded).
async fn expect_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    expected: &str,
) {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("browser.mjs did not say {expected} within 120 s"))
            .unwrap();
        match line {
            Some(line) if line.trim() == expected => return,
            Some(_) => continue,
            None => panic!("browser.mjs ended before saying {expected}; see its log above"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_when_the_master_comes_back() {
    let tools = Tools::find();
    let home = Home::new(Backend::Postgres).await;
    let (mut master, addr) = spawn_server_process(&home, "127.0.0.1:0");
    let base = format!("http://{addr}");
    tools.check_served(&base).await;
    let api = Api::new(&base, ADMIN_TOKEN);
    let first = api
        .submit(
            json!({"kernel": "primes", "inputs": primes_inputs(0, 2_000_000, 4), "redundancy": 1}),
        )
        .await;

    let mut child = tokio::process::Command::new(&tools.node)
        .arg(&tools.script)
        .args(["reconnect", &base, ADMIN_TOKEN, &first.to_string()])
        .env("CHROMIUM", &tools.chromium)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // The page computed the first job; now the master dies without a goodbye.
    expect_line(&mut lines, "READY").await;
    master.kill();
    stdin.write_all(b"KILLED\n").await.unwrap();
    expect_line(&mut lines, "RECONNECTING").await;
    // Back on the same address: the page must find it by itself.
    let (_master, _) = spawn_server_process(&home, &addr.to_string());
    let inputs = primes_inputs(0, 3_000_000, 6);
    let second = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 1}))
        .await;
    stdin
        .write_all(format!("RESTARTED {second}\n").as_bytes())
        .await
        .unwrap();

    let mut last = String::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(SCENARIO_TIMEOUT, lines.next_line()).await {
        last = line;
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "browser scenario reconnect failed: {last}"
    );
    let summary: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
    assert_eq!(summary["ok"], true, "{last}");
    let finished = api.wait_finished(second, Duration::from_secs(10)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(second).await;
    assert_eq!(
        primes_total(&results, 6, Some(1)),
        primes_reference(&inputs)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_tabs_compute_a_primes_job_alone() {
    let tools = Tools::find();
    let server = InProcessServer::start(Backend::Postgres).await;
    tools.check_served(&server.http()).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let inputs = primes_inputs(0, 10_000_000, 20);
    let job = api
        .submit(json!({
            "kernel": "primes", "inputs": inputs, "redundancy": 2, "name": "pi(10^7) in browsers",
        }))
        .await;

    let summary = tools.run("two-tabs", &server, &[job]).await;
    assert_eq!(
        summary["volunteers"].as_array().map(Vec::len),
        Some(2),
        "{summary}"
    );

    let finished = api.wait_finished(job, Duration::from_secs(10)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(finished["chunks"]["total"], 20, "{finished}");
    assert_eq!(finished["chunks"]["done"], 20, "{finished}");
    assert_eq!(finished["chunks"]["failed"], 0, "{finished}");
    assert_eq!(finished["replicas"]["invalid"], 0, "{finished}");
    let results = api.results(job).await;
    assert_eq!(primes_total(&results, 20, Some(2)), 664_579);

    // Only the two browser volunteers computed it: every chunk by both.
    let store = &server.store;
    let workers = store
        .count(&format!(
            "SELECT count(DISTINCT worker_id) FROM replicas WHERE job_id = {job} AND verdict = 'valid'"
        ))
        .await;
    assert_eq!(workers, 2);
    let not_browser = store
        .count(&format!(
            "SELECT count(*) FROM replicas r JOIN workers w ON w.id = r.worker_id
             WHERE r.job_id = {job} AND (w.kind <> 'browser' OR r.worker_id NOT LIKE 'browser-%')"
        ))
        .await;
    assert_eq!(not_browser, 0, "only browser workers took part");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_tab_mid_job_loses_nothing() {
    let tools = Tools::find();
    let server = InProcessServer::start(Backend::Postgres).await;
    tools.check_served(&server.http()).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    // Chunks of a few hundred milliseconds, so the job is still running when the tab closes.
    let start = 100_000_000_000;
    let inputs = primes_inputs(start, start + 48 * 100_000_000, 48);
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;

    let summary = tools.run("close-one", &server, &[job]).await;
    let closed = summary["closed"].as_str().unwrap().to_owned();

    let finished = api.wait_finished(job, Duration::from_secs(10)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(finished["chunks"]["done"], 48);
    assert!(
        finished["replicas"]["expired"].as_i64().unwrap() >= 1,
        "the closed tab's leases were taken back: {finished}"
    );
    let results = api.results(job).await;
    assert_eq!(
        primes_total(&results, 48, Some(2)),
        primes_reference(&inputs)
    );
    let by_closed = server
        .store
        .count(&format!(
            "SELECT count(*) FROM replicas WHERE job_id = {job} AND worker_id = '{closed}'
             AND state = 'expired'"
        ))
        .await;
    assert!(
        by_closed >= 1,
        "the closed volunteer held leases that were reissued"
    );
    server.stop().await;
}

/// Mandelbrot tiles: a whole view and a deep zoom on the boundary (long float iterations).
fn mandelbrot_inputs() -> Vec<Value> {
    let mut inputs = Vec::new();
    for (x_min, x_max, y_min, y_max, max_iter) in [
        (-2.0, 1.0, -1.5, 1.5, 500),
        (-0.745_43, -0.745_38, 0.113_0, 0.113_05, 4000),
    ] {
        for ty in 0..3 {
            for tx in 0..3 {
                inputs.push(json!({
                    "width": 96, "height": 96,
                    "x_min": x_min, "x_max": x_max, "y_min": y_min, "y_max": y_max,
                    "max_iter": max_iter,
                    "tile": {"x": tx * 32, "y": ty * 32, "w": 32, "h": 32},
                }));
            }
        }
    }
    inputs
}

fn sha256_inputs() -> Vec<Value> {
    (0..10)
        .map(|i| {
            json!({"prefix": "grid-mixed-✓", "start": i * 20_000, "end": (i + 1) * 20_000, "difficulty": 14})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_a_native_worker_agree_on_every_chunk() {
    let tools = Tools::find();
    let server = InProcessServer::start(Backend::Postgres).await;
    tools.check_served(&server.http()).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let jobs = [
        ("primes", primes_inputs(0, 10_000_000, 10)),
        ("mandelbrot", mandelbrot_inputs()),
        ("sha256", sha256_inputs()),
    ];
    let mut ids = Vec::new();
    for (kernel, inputs) in &jobs {
        let id = api
            .submit(json!({"kernel": kernel, "inputs": inputs, "redundancy": 2}))
            .await;
        ids.push(id);
    }
    let home = tempfile::tempdir().unwrap();
    let _native = spawn_worker(&server.ws(), 1, &home.path().join("native.id"));

    tools.run("mixed", &server, &ids).await;

    for ((kernel, inputs), id) in jobs.iter().zip(&ids) {
        let finished = api.wait_finished(*id, Duration::from_secs(10)).await;
        assert_eq!(finished["state"], "done", "{kernel}: {finished}");
        assert_eq!(finished["chunks"]["failed"], 0, "{kernel}: {finished}");
        assert_eq!(finished["replicas"]["invalid"], 0, "{kernel}: {finished}");
        let results = api.results(*id).await;
        assert_eq!(results.len(), inputs.len(), "{kernel}");
        for (line, input) in results.iter().zip(inputs) {
            assert_eq!(line["agreeing"], 2, "{kernel}: {line}");
            // And they agree on the right answer.
            assert_eq!(
                line["output"],
                grid_kernels::run(kernel, input).unwrap(),
                "{kernel}"
            );
        }
        // Every chunk accepted on the word of one browser and one native worker.
        let mixed = server
            .store
            .count(&format!(
                "SELECT count(*) FROM (SELECT r.chunk_idx FROM replicas r
                 JOIN workers w ON w.id = r.worker_id
                 WHERE r.job_id = {id} AND r.verdict = 'valid'
                 GROUP BY r.chunk_idx HAVING count(DISTINCT w.kind) = 2) AS both_kinds"
            ))
            .await;
        assert_eq!(
            mixed,
            inputs.len() as i64,
            "{kernel}: chunks agreed by both kinds"
        );
    }
    server.stop().await;
}

/// A module whose input picks its fate: the first byte of the input text, `0` to `9`, selects
/// a case below; any other input (and `0`) is echoed. An input text of exactly 11 bytes gets
/// a `grid_alloc` buffer outside the memory.
fn fates_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (data (i32.const 16) "{nope")
             (func (export "grid_alloc") (param $len i32) (result i32)
               (if (result i32) (i32.eq (local.get $len) (i32.const 11))
                 (then (i32.const 65534))
                 (else (i32.const 1024))))
             (func $down (param i32) (result i32)
               (i32.add (call $down (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
             (func (export "grid_run") (param $ptr i32) (param $len i32) (result i64)
               (block $echo
                 (block $unreachable
                   (block $divide
                     (block $out_of_bounds
                       (block $hog
                         (block $not_json
                           (block $output_outside
                             (block $recursion
                               (block $conversion
                                 (block $forever
                                   (br_table $echo $unreachable $divide $out_of_bounds $hog
                                             $not_json $output_outside $recursion $conversion
                                             $forever $echo
                                     (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 48))))
                                 ;; 9
                                 (loop $spin (br $spin))
                                 (unreachable))
                               ;; 8
                               (return (i64.trunc_f64_s (f64.const 1e300))))
                             ;; 7
                             (drop (call $down (i32.const 0)))
                             (unreachable))
                           ;; 6: 65535 bytes at 65520
                           (return (i64.const 0x0000fff00000ffff)))
                         ;; 5: "{nope" (5 bytes at 16)
                         (return (i64.const 0x0000001000000005)))
                       ;; 4: grow a page at a time until refused, then abort
                       (block $full
                         (loop $more
                           (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                           (br $more)))
                       (unreachable))
                     ;; 3
                     (drop (i32.load (i32.const 0x7ffffff0)))
                     (unreachable))
                   ;; 2
                   (drop (i32.div_u (i32.const 1) (i32.sub (local.get $len) (local.get $len))))
                   (unreachable))
                 ;; 1
                 (unreachable))
               (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                       (i64.extend_i32_u (local.get $len)))))"#,
    )
    .unwrap()
}

/// The inputs of a [`fates_module`] job with `max_memory_mb` 8 and `timeout_ms` 1000, and what
/// every honest worker must report for each: `Ok(output)` or `Err(error text)`.
fn fates() -> Vec<(Value, Result<Value, &'static str>)> {
    let echoed = json!({"a": [1, 2.5], "b": "✓"});
    vec![
        (json!(0), Ok(json!(0))),
        (
            json!(1),
            Err("trap: unreachable instruction executed (memory in use: 1 of 8 MiB)"),
        ),
        (
            json!(2),
            Err("trap: integer divide by zero (memory in use: 1 of 8 MiB)"),
        ),
        (
            json!(3),
            Err("trap: out of bounds memory access (memory in use: 1 of 8 MiB)"),
        ),
        (
            json!(4),
            Err("trap: unreachable instruction executed (memory in use: 8 of 8 MiB)"),
        ),
        (
            json!(5),
            Err("bad output: not JSON: key must be a string at line 1 column 2"),
        ),
        (
            json!(6),
            Err(
                "bad output: grid_run returned 65535 bytes at 65520, outside the 65536-byte memory",
            ),
        ),
        (
            json!(7),
            Err("trap: call stack exhausted (memory in use: 1 of 8 MiB)"),
        ),
        (
            json!(8),
            Err("trap: invalid conversion to integer (memory in use: 1 of 8 MiB)"),
        ),
        (json!(9), Err("timeout: the chunk ran longer than 1000 ms")),
        (
            json!("alloc-oob"),
            Err("bad input buffer: grid_alloc(11) returned 65534, outside the 65536-byte memory"),
        ),
        (echoed.clone(), Ok(echoed)),
    ]
}

/// fib(n) mod 2^64, as `examples/wat/fibonacci.wat` computes it.
fn fibonacci(n: u64) -> u64 {
    let (mut a, mut b) = (0_u64, 1_u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    a
}

/// Every chunk of job `id` was accepted on the word of one browser and one native worker.
async fn assert_both_kinds_agreed(server: &InProcessServer, id: i64, chunks: usize, what: &str) {
    let mixed = server
        .store
        .count(&format!(
            "SELECT count(*) FROM (SELECT r.chunk_idx FROM replicas r
             JOIN workers w ON w.id = r.worker_id
             WHERE r.job_id = {id} AND r.verdict = 'valid'
             GROUP BY r.chunk_idx HAVING count(DISTINCT w.kind) = 2) AS both_kinds"
        ))
        .await;
    assert_eq!(mixed, chunks as i64, "{what}: chunks agreed by both kinds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_a_native_worker_agree_on_every_module_chunk() {
    let tools = Tools::find();
    let collatz = example("collatz");
    let fibonacci_wasm = example("fibonacci");
    let server = InProcessServer::start(Backend::Postgres).await;
    tools.check_served(&server.http()).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);

    let collatz_id = api.upload_module(collatz).await;
    let fibonacci_id = api.upload_module(fibonacci_wasm).await;
    let fates_id = api.upload_module(fates_module()).await;
    let bomb_id = api.upload_module(table_bomb(false)).await;
    let growing_bomb_id = api.upload_module(table_bomb(true)).await;
    let collatz_inputs: Vec<Value> = (0..10)
        .map(|i| json!({"start": 1 + i * 100_000, "end": 1 + (i + 1) * 100_000}))
        .collect();
    let fibonacci_inputs: Vec<u64> = vec![0, 1, 2, 10, 90, 93, 94, 500, 1000];
    let fates = fates();
    let fates_inputs: Vec<&Value> = fates.iter().map(|(input, _)| input).collect();

    let collatz_job = api
        .submit(json!({"module": collatz_id, "inputs": collatz_inputs, "redundancy": 2}))
        .await;
    let fibonacci_job = api
        .submit(json!({"module": fibonacci_id, "inputs": fibonacci_inputs, "redundancy": 2}))
        .await;
    let fates_job = api
        .submit(json!({
            "module": fates_id, "inputs": fates_inputs, "redundancy": 2,
            "max_memory_mb": 8, "timeout_ms": 1000,
        }))
        .await;
    // Tables count against the memory cap alike in V8 and wasmtime.
    let bomb_job = api
        .submit(json!({
            "module": bomb_id, "inputs": [1, 2], "redundancy": 2, "max_memory_mb": 16,
        }))
        .await;
    let growing_bomb_job = api
        .submit(json!({
            "module": growing_bomb_id, "inputs": [1, 2], "redundancy": 2, "max_memory_mb": 16,
        }))
        .await;
    let home = tempfile::tempdir().unwrap();
    let _native = spawn_worker(&server.ws(), 1, &home.path().join("native.id"));

    tools
        .run(
            "modules",
            &server,
            &[
                collatz_job,
                fibonacci_job,
                fates_job,
                bomb_job,
                growing_bomb_job,
            ],
        )
        .await;

    // The Rust example: every chunk agreed, and the famous one right.
    let finished = api
        .wait_finished(collatz_job, Duration::from_secs(10))
        .await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(collatz_job).await;
    assert_eq!(results.len(), collatz_inputs.len());
    assert!(
        results.iter().all(|line| line["agreeing"] == 2),
        "{results:?}"
    );
    assert_eq!(
        results[8]["output"],
        json!({"longest": {"n": 837_799, "steps": 524}}),
        "the longest chain below a million"
    );
    assert_both_kinds_agreed(&server, collatz_job, collatz_inputs.len(), "collatz").await;

    // The WAT example.
    let finished = api
        .wait_finished(fibonacci_job, Duration::from_secs(10))
        .await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(fibonacci_job).await;
    assert_eq!(results.len(), fibonacci_inputs.len());
    for (line, n) in results.iter().zip(&fibonacci_inputs) {
        assert_eq!(line["agreeing"], 2, "{line}");
        assert_eq!(line["output"], json!(fibonacci(*n)), "fib({n})");
    }
    assert_both_kinds_agreed(&server, fibonacci_job, fibonacci_inputs.len(), "fibonacci").await;

    // Every way to fail, reported alike by V8 and wasmtime.
    let finished = api.wait_finished(fates_job, Duration::from_secs(10)).await;
    assert_eq!(finished["state"], "failed", "{finished}");
    let results = api.results(fates_job).await;
    assert_eq!(results.len(), fates.len());
    for (line, (input, expected)) in results.iter().zip(&fates) {
        match expected {
            Ok(output) => assert_eq!(&line["output"], output, "{input}: {line}"),
            Err(error) => assert_eq!(line["error"], *error, "{input}: {line}"),
        }
    }
    assert_both_kinds_agreed(&server, fates_job, fates.len(), "fates").await;

    // The table bombs: refused at start, or their tables do not grow, in both engines.
    for (job, error, name) in [
        (
            bomb_job,
            "memory limit exceeded: the module needs 306 MiB at start (65536 bytes of memory, \
             320000000 bytes of tables); the limit is 16 MiB",
            "table bomb",
        ),
        (
            growing_bomb_job,
            "trap: out of bounds table access (memory in use: 1 of 16 MiB)",
            "growing table bomb",
        ),
    ] {
        api.assert_all_failed_with(job, 2, error).await;
        assert_both_kinds_agreed(&server, job, 2, name).await;
    }
    server.stop().await;
}

/// The WASI programs of the browser-and-native test: (module, job fields, inputs, what each
/// chunk must end with: `Ok(output)`, `Err(error text)`, or `None` to take the agreed
/// outcome as it is).
type WasiJob = (
    &'static str,
    Value,
    Vec<Value>,
    Vec<Option<Result<Value, String>>>,
);

fn wasi_jobs() -> Vec<WasiJob> {
    let ok = |value: Value| Some(Ok(value));
    let failed = |text: &str| Some(Err(text.to_owned()));
    vec![
        (
            "hailstone",
            json!({}),
            vec![json!({"n": 27}), json!({"n": 0})],
            vec![
                ok(json!({"n": 27, "peak": 9232, "steps": 111})),
                failed(
                    r#"exit: the program exited with code 2; stderr: expected {"n": <positive integer>}, got {"n":0}"#,
                ),
            ],
        ),
        (
            "hailstone",
            json!({"output": "text"}),
            vec![json!({"n": 1})],
            vec![ok(json!("{\"n\":1,\"peak\":1,\"steps\":0}\n"))],
        ),
        // The clock and random bytes: deterministic per chunk, the same in both engines.
        (
            "dice",
            json!({}),
            (0..4).map(|rolls| json!({"rolls": rolls * 3})).collect(),
            vec![None, None, None, None],
        ),
        // Every function of the subset, edge cases included, byte for byte.
        (
            "wasi-probe",
            json!({}),
            vec![
                json!("report"),
                json!("bad-pointer"),
                json!("misaligned"),
                json!("bad-clock"),
                json!("exit-200"),
            ],
            vec![
                None,
                failed("trap: trap (memory in use: 1 of 256 MiB)"),
                failed("trap: trap (memory in use: 1 of 256 MiB)"),
                failed("trap: trap (memory in use: 1 of 256 MiB)"),
                failed("exit: the program exited with code 200"),
            ],
        ),
        (
            "wordcount",
            json!({}),
            vec![
                json!({"text": "To be, or not to be: that is the question."}),
                json!(7),
            ],
            vec![
                ok(json!({
                    "top": [["be", 2], ["to", 2], ["is", 1], ["not", 1], ["or", 1],
                            ["question", 1], ["that", 1], ["the", 1]],
                    "words": 10
                })),
                failed(
                    r#"exit: the program exited with code 2; stderr: expected a JSON object {"text": "..."}"#,
                ),
            ],
        ),
        (
            "primes-zig",
            json!({}),
            vec![json!({"start": 0, "end": 100_000}), json!({"start": 5})],
            vec![
                ok(json!({"count": 9592})),
                failed("exit: the program exited with code 2"),
            ],
        ),
        (
            "sum-squares-raw",
            json!({}),
            vec![json!(3_000_000), json!(-1)],
            vec![
                ok(json!(9_000_004_500_000_500_000_u64)),
                ok(json!({"error": "input must be an integer from 0 to 3000000"})),
            ],
        ),
        (
            "triangular-as",
            json!({}),
            vec![json!(8), json!(1_000_000_000)],
            vec![
                ok(json!({"n": 8, "square": true, "triangular": 36})),
                ok(
                    json!({"n": 1_000_000_000, "square": false, "triangular": 500_000_000_500_000_000_u64}),
                ),
            ],
        ),
        // The hostile programs fail alike in both engines.
        (
            "hostile-reads-file",
            json!({}),
            vec![json!(1)],
            vec![failed(
                "exit: the program exited with code 1; stderr: fopen(/etc/passwd): Capabilities \
                 insufficient\npath_open(3, etc/passwd): errno 76\nfd_prestat_get(3): errno 8",
            )],
        ),
        (
            "hostile-opens-socket",
            json!({}),
            vec![json!(1)],
            vec![failed(
                "exit: the program exited with code 1; stderr: sock_accept(3): errno 76\n\
                 sock_shutdown(0): errno 76\npoll_oneoff(sleep 1 s): errno 52",
            )],
        ),
        (
            "hostile-exits-3",
            json!({}),
            vec![json!(1)],
            vec![failed(
                "exit: the program exited with code 3; stderr: giving up: the input is not to my liking",
            )],
        ),
        (
            "hostile-floods-stdout",
            json!({}),
            vec![json!(1)],
            vec![failed(
                "output limit exceeded: the program wrote more than 16777216 bytes to standard \
                 output; stderr: flooding",
            )],
        ),
        (
            "hostile-spins",
            json!({"timeout_ms": 500}),
            vec![json!(1)],
            vec![failed("timeout: the chunk ran longer than 500 ms")],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_a_native_worker_agree_on_wasi_programs() {
    let tools = Tools::find();
    let server = InProcessServer::start(Backend::Postgres).await;
    tools.check_served(&server.http()).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let mut jobs = Vec::new();
    for (name, fields, inputs, expected) in wasi_jobs() {
        let id = api.upload_module(example(name)).await;
        let mut body = json!({"module": id, "inputs": inputs, "redundancy": 2});
        for (field, value) in fields.as_object().unwrap() {
            body[field] = value.clone();
        }
        jobs.push((name, api.submit(body).await, inputs, expected));
    }
    let home = tempfile::tempdir().unwrap();
    let _native = spawn_worker(&server.ws(), 1, &home.path().join("native.id"));
    let ids: Vec<i64> = jobs.iter().map(|(_, id, _, _)| *id).collect();
    tools.run("modules", &server, &ids).await;

    let mut dice = Vec::new();
    for (name, id, inputs, expected) in &jobs {
        api.wait_finished(*id, Duration::from_secs(10)).await;
        let results = api.results(*id).await;
        assert_eq!(results.len(), inputs.len(), "{name}");
        for ((line, input), expected) in results.iter().zip(inputs).zip(expected) {
            match expected {
                Some(Ok(output)) => assert_eq!(&line["output"], output, "{name} {input}: {line}"),
                Some(Err(error)) => assert_eq!(line["error"], *error, "{name} {input}: {line}"),
                None => assert!(line["error"].is_null(), "{name} {input}: {line}"),
            }
        }
        // Accepted on the word of a browser and a native worker: byte-identical outcomes.
        assert_both_kinds_agreed(&server, *id, inputs.len(), name).await;
        if *name == "dice" {
            dice = results.iter().map(|line| line["output"].clone()).collect();
        }
    }
    // The fixed clock, and random bytes that differ from chunk to chunk.
    assert!(
        dice.iter().all(|output| output["time"] == 1_767_225_600),
        "{dice:?}"
    );
    let draws: std::collections::BTreeSet<String> = dice
        .iter()
        .map(|output| output["random"].to_string())
        .collect();
    assert_eq!(draws.len(), dice.len(), "{dice:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_fail_cleanly_in_the_browser_and_the_page_goes_on() {
    let tools = Tools::find();
    let server = InProcessServer::start(Backend::Postgres).await;
    tools.check_served(&server.http()).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);

    let looping = api.upload_module(endless_loop()).await;
    let hog = api.upload_module(memory_hog()).await;
    let trapping = api.upload_module(trap()).await;
    let echoing = api.upload_module(echo()).await;
    // More looping chunks than the page has threads: each thread's sandbox is terminated and
    // replaced more than once.
    let loop_job = api
        .submit(json!({
            "module": looping, "inputs": [1, 2, 3, 4, 5], "timeout_ms": 300, "redundancy": 1,
        }))
        .await;
    let hog_job = api
        .submit(json!({"module": hog, "inputs": [1], "max_memory_mb": 16, "redundancy": 1}))
        .await;
    let trap_job = api
        .submit(json!({"module": trapping, "inputs": [1, 2], "redundancy": 1}))
        .await;
    let echo_inputs = json!([{"b": 1, "a": [1, 2.5]}, "text ✓", 42, null]);
    let echo_job = api
        .submit(json!({"module": echoing, "inputs": echo_inputs, "redundancy": 1}))
        .await;
    let primes = primes_inputs(0, 2_000_000, 8);
    let primes_job = api
        .submit(json!({"kernel": "primes", "inputs": primes, "redundancy": 1}))
        .await;

    let summary = tools
        .run(
            "hostile",
            &server,
            &[loop_job, hog_job, trap_job, echo_job, primes_job],
        )
        .await;

    for (job, chunks, error) in [
        (loop_job, 5, "timeout: the chunk ran longer than 300 ms"),
        (
            hog_job,
            1,
            "trap: unreachable instruction executed (memory in use: 16 of 16 MiB)",
        ),
        (
            trap_job,
            2,
            "trap: unreachable instruction executed (memory in use: 1 of 256 MiB)",
        ),
    ] {
        api.assert_all_failed_with(job, chunks, error).await;
    }
    let finished = api.wait_finished(echo_job, Duration::from_secs(10)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let outputs: Vec<Value> = api
        .results(echo_job)
        .await
        .into_iter()
        .map(|line| line["output"].clone())
        .collect();
    assert_eq!(Value::Array(outputs), echo_inputs);
    let finished = api.wait_finished(primes_job, Duration::from_secs(10)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(primes_job).await;
    assert_eq!(
        primes_total(&results, 8, Some(1)),
        primes_reference(&primes)
    );

    // Nothing was handed back or lost: every lease of the browser ended in a result.
    let unanswered = server
        .store
        .count("SELECT count(*) FROM replicas WHERE state <> 'returned'")
        .await;
    assert_eq!(unanswered, 0, "{summary}");
    server.stop().await;
}

/// One process under the test's Node script: what Chromium calls it and its peak resident
/// memory so far.
#[derive(Debug, Clone)]
struct ProcessPeak {
    /// `browser`, `zygote`, `renderer`, `gpu-process`, `utility (network.mojom.NetworkService)`…
    kind: String,
    /// `VmHWM` of `/proc/<pid>/status`, in KiB.
    peak_kib: u64,
}

/// The parent of process `pid`, from `/proc/<pid>/stat` (`pid (comm) state ppid …`; the
/// command name may hold spaces and parentheses, so it is skipped up to its last `)`).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Chromium's name for a process of its own, from its command line (`--type=…`). Chromium
/// rewrites the command line of the processes it starts into one text, arguments separated by
/// spaces, so both NULs and spaces separate arguments here.
fn chromium_kind(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = String::from_utf8_lossy(&cmdline)
        .split(['\0', ' '])
        .map(str::to_owned)
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|arg| arg.strip_prefix(name).map(str::to_owned))
    };
    match (flag("--type="), flag("--utility-sub-type=")) {
        (Some(kind), Some(sub)) => format!("{kind} ({sub})"),
        (Some(kind), None) => kind,
        (None, _) => {
            let program = args.first().map(String::as_str).unwrap_or_default();
            let name = program.rsplit('/').next().unwrap_or_default();
            if name.contains("chrom") {
                "browser".into()
            } else {
                name.to_owned()
            }
        }
    }
}

/// Every live process descended from `root` (not `root` itself), with its peak resident
/// memory: the Chromium that `root`, the Node script, launched, and everything Chromium
/// started (zygotes, renderers, the GPU and utility processes). Web Workers, so the compute
/// threads and the task-module sandboxes, are threads of the page's renderer process.
///
/// With `reset`, each peak is first brought down to the process's present resident memory
/// (`5` into `/proc/<pid>/clear_refs`), so that a later reading is the peak since now: memory
/// taken and given back after a higher peak of the page's start would not show otherwise.
fn browser_peaks(root: u32, reset: bool) -> std::collections::BTreeMap<u32, ProcessPeak> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(parent) = parent_pid(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut peaks = std::collections::BTreeMap::new();
    let mut todo = children.get(&root).cloned().unwrap_or_default();
    while let Some(pid) = todo.pop() {
        todo.extend(children.get(&pid).into_iter().flatten());
        if reset {
            let clear_refs = format!("/proc/{pid}/clear_refs");
            if let Err(error) = std::fs::write(&clear_refs, "5") {
                // Only a process that ended meanwhile may be passed over.
                assert!(
                    !Path::new(&format!("/proc/{pid}")).exists(),
                    "cannot reset the peak resident memory of process {pid} ({clear_refs}): \
                     {error}"
                );
                continue;
            }
        }
        // A process that ended meanwhile, or a zombie, has no VmHWM.
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let peak_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok());
        if let Some(peak_kib) = peak_kib {
            let kind = chromium_kind(pid);
            peaks.insert(pid, ProcessPeak { kind, peak_kib });
        }
    }
    peaks
}

/// The memory cap of the table bombs' jobs.
const BOMB_CAP_MB: u64 = 16;
/// The page's compute threads in the `bombs` scenario: as many bomb chunks run at once.
const BOMB_THREADS: u64 = 2;
/// What Chromium's memory may grow by while the bombs run besides the chunks' caps: allocator
/// and garbage-collector slack, the bombs' modules fetched and the growing one compiled, the
/// page's own work. The bombs, had they been run, would need 306 MiB per chunk.
const BOMB_SLACK_MB: u64 = 48;
/// The bound on the growth of the peak resident memory of each Chromium process and of their
/// sum: every thread running a chunk at the cap, and the slack. Measured when this was
/// written: the page's renderer +0.8 MiB, all nine processes together +0.9 to 1.1 MiB; the
/// declared bomb given a 512 MiB cap instead (so that it runs) took the renderer up by 1.8 GiB.
const BOMB_GROWTH_BOUND_KIB: u64 = (BOMB_THREADS * BOMB_CAP_MB + BOMB_SLACK_MB) * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_bombs_leave_chromium_within_their_memory_cap() {
    let tools = Tools::find();
    let server = InProcessServer::start(Backend::Postgres).await;
    tools.check_served(&server.http()).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let echoing = api.upload_module(echo()).await;
    let bomb = api.upload_module(table_bomb(false)).await;
    let growing_bomb = api.upload_module(table_bomb(true)).await;
    let echo_job = |inputs: Value| {
        let api = &api;
        let echoing = &echoing;
        async move {
            api.submit(json!({
                "module": echoing, "inputs": inputs, "redundancy": 1, "max_memory_mb": BOMB_CAP_MB,
            }))
            .await
        }
    };

    // Warm-up: the page loads, both threads start their sandboxes, compile and run a module
    // under the bombs' cap, and compute a kernel job.
    let warm_echo = echo_job(json!([1, 2, 3, 4, 5, 6, 7, 8, "warm ✓", {"up": true}])).await;
    let warm_primes = api
        .submit(
            json!({"kernel": "primes", "inputs": primes_inputs(0, 2_000_000, 4), "redundancy": 1}),
        )
        .await;
    let mut child = tokio::process::Command::new(&tools.node)
        .arg(&tools.script)
        .args([
            "bombs",
            &server.http(),
            ADMIN_TOKEN,
            &format!("{warm_echo},{warm_primes}"),
        ])
        .env("CHROMIUM", &tools.chromium)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let node = child.id().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    expect_line(&mut lines, "WARM").await;
    let before = browser_peaks(node, true);
    assert!(
        before.values().any(|p| p.kind == "renderer"),
        "no renderer among the browser's processes: {before:?}"
    );

    // The bombs, several chunks each: more than the page has threads.
    let chunks = 6;
    let inputs: Vec<u64> = (1..=chunks).collect();
    let bomb_job = api
        .submit(json!({
            "module": bomb, "inputs": inputs, "redundancy": 1, "max_memory_mb": BOMB_CAP_MB,
        }))
        .await;
    let growing_bomb_job = api
        .submit(json!({
            "module": growing_bomb, "inputs": inputs, "redundancy": 1,
            "max_memory_mb": BOMB_CAP_MB,
        }))
        .await;
    stdin
        .write_all(format!("BOMBS {bomb_job},{growing_bomb_job}\n").as_bytes())
        .await
        .unwrap();
    expect_line(&mut lines, "BOMBED").await;
    let after = browser_peaks(node, false);

    // The page goes on computing ordinary work.
    let echo_inputs = json!([{"b": 1, "a": [1, 2.5]}, "after the bombs ✓", 42, null]);
    let after_echo = echo_job(echo_inputs.clone()).await;
    let primes = primes_inputs(0, 3_000_000, 6);
    let after_primes = api
        .submit(json!({"kernel": "primes", "inputs": primes, "redundancy": 1}))
        .await;
    stdin
        .write_all(format!("AFTER {after_echo},{after_primes}\n").as_bytes())
        .await
        .unwrap();
    let mut last = String::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(SCENARIO_TIMEOUT, lines.next_line()).await {
        last = line;
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "browser scenario bombs failed: {last}");
    let summary: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
    assert_eq!(summary["ok"], true, "{last}");

    // What the measurements say, process by process.
    let mut growths = Vec::new();
    for (pid, now) in &after {
        let was = before.get(pid).map(|p| p.peak_kib);
        let growth = now.peak_kib - was.unwrap_or(0).min(now.peak_kib);
        eprintln!(
            "chromium process {pid} ({}): resident {} KiB after the warm-up, peak (VmHWM) {} \
             KiB during the bombs: +{growth} KiB",
            now.kind,
            was.map_or("(not running)".into(), |kib| kib.to_string()),
            now.peak_kib
        );
        growths.push((growth, *pid, now.kind.clone()));
    }
    let sum_before: u64 = before.values().map(|p| p.peak_kib).sum();
    let sum_after: u64 = after.values().map(|p| p.peak_kib).sum();
    let total_growth: u64 = growths.iter().map(|(growth, _, _)| growth).sum();
    eprintln!(
        "chromium, {} processes: resident {sum_before} KiB together after the warm-up, peaks \
         summed {sum_after} KiB during the bombs: +{total_growth} KiB (bound \
         {BOMB_GROWTH_BOUND_KIB} KiB)",
        after.len()
    );
    // A process that ended in between (a crashed renderer, say) would hide its peak.
    let gone: Vec<_> = before
        .iter()
        .filter(|(pid, _)| !after.contains_key(pid))
        .collect();
    assert!(
        gone.is_empty(),
        "browser processes ended during the bombs: {gone:?}"
    );
    let (largest, pid, kind) = growths.iter().max().cloned().unwrap();
    assert!(
        largest <= BOMB_GROWTH_BOUND_KIB,
        "chromium process {pid} ({kind}) grew by {largest} KiB during the table bombs, over \
         {BOMB_GROWTH_BOUND_KIB} KiB"
    );
    assert!(
        total_growth <= BOMB_GROWTH_BOUND_KIB,
        "chromium's processes grew by {total_growth} KiB together during the table bombs, \
         over {BOMB_GROWTH_BOUND_KIB} KiB"
    );

    // The bombs failed with the native worker's texts.
    api.assert_all_failed_with(
        bomb_job,
        inputs.len(),
        "memory limit exceeded: the module needs 306 MiB at start (65536 bytes of memory, \
         320000000 bytes of tables); the limit is 16 MiB",
    )
    .await;
    api.assert_all_failed_with(
        growing_bomb_job,
        inputs.len(),
        "trap: out of bounds table access (memory in use: 1 of 16 MiB)",
    )
    .await;
    // And the work around them is complete and right.
    for job in [warm_echo, warm_primes, after_echo, after_primes] {
        let finished = api.wait_finished(job, Duration::from_secs(10)).await;
        assert_eq!(finished["state"], "done", "{finished}");
    }
    let outputs: Vec<Value> = api
        .results(after_echo)
        .await
        .into_iter()
        .map(|line| line["output"].clone())
        .collect();
    assert_eq!(Value::Array(outputs), echo_inputs);
    let results = api.results(after_primes).await;
    assert_eq!(
        primes_total(&results, 6, Some(1)),
        primes_reference(&primes)
    );
    // Nothing was handed back or lost: every lease of the page ended in a result.
    let unanswered = server
        .store
        .count("SELECT count(*) FROM replicas WHERE state <> 'returned'")
        .await;
    assert_eq!(unanswered, 0, "{summary}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_module_chunk_stops_when_revoked_or_paused() {
    let tools = Tools::find();
    let server = InProcessServer::start(Backend::Postgres).await;
    tools.check_served(&server.http()).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let looping = api.upload_module(endless_loop()).await;
    // Ten minutes, the longest limit: only a revoke or a pause can end these chunks in time.
    let loop_job = api
        .submit(json!({
            "module": looping, "inputs": [1], "timeout_ms": 600_000, "redundancy": 1,
        }))
        .await;
    let primes = primes_inputs(0, 1_000_000, 4);
    let primes_job = api
        .submit(json!({"kernel": "primes", "inputs": primes, "redundancy": 1}))
        .await;

    // The page (one thread) cancels the loop job while it runs, computes the kernel job on the
    // freed slot, submits a second loop job and pauses while that one runs.
    let summary = tools
        .run("revoke-pause", &server, &[loop_job, primes_job])
        .await;
    let paused_job = summary["pausedJob"].as_i64().unwrap();

    let replicas = |job: i64, state: &'static str| {
        let store = &server.store;
        async move {
            store
                .count(&format!(
                    "SELECT count(*) FROM replicas WHERE job_id = {job} AND state = '{state}'"
                ))
                .await
        }
    };
    let (_, cancelled) = api.get(&format!("/api/v1/jobs/{loop_job}")).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(
        replicas(loop_job, "revoked").await,
        1,
        "the running lease was revoked"
    );
    assert_eq!(
        replicas(loop_job, "returned").await,
        0,
        "and no result came for it"
    );

    let finished = api.wait_finished(primes_job, Duration::from_secs(10)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(primes_job).await;
    assert_eq!(
        primes_total(&results, 4, Some(1)),
        primes_reference(&primes)
    );

    assert_eq!(
        replicas(paused_job, "released").await,
        1,
        "pausing handed the running lease back"
    );
    assert_eq!(replicas(paused_job, "returned").await, 0);
    let (_, paused) = api.get(&format!("/api/v1/jobs/{paused_job}")).await;
    assert!(
        matches!(paused["state"].as_str(), Some("queued" | "running")),
        "{paused}"
    );
    server.stop().await;
}

/// A master on the embedded store with `allowed_origins`, for the origin tests.
async fn start_with_origins(
    allowed_origins: Vec<String>,
) -> (String, Home, tokio::sync::oneshot::Sender<()>) {
    let home = Home::new(Backend::Sqlite).await;
    let store = home.open().await.shared();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        admin_token: Some(ADMIN_TOKEN.into()),
        allowed_origins,
        ..ServeOptions::default()
    };
    tokio::spawn(serve(listener, Arc::clone(&store), options, async {
        let _ = stopped.await;
    }));
    (addr.to_string(), home, stop)
}

/// Open `/ws` with an `Origin` header: `Ok` if upgraded, else the HTTP status and body.
async fn handshake(addr: &str, origin: Option<&str>) -> Result<(), (u16, Value)> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|bytes| serde_json::from_slice(bytes).ok())
                .unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("handshake failed unexpectedly: {other}"),
    }
}

#[tokio::test]
async fn worker_sessions_from_other_origins_are_refused() {
    let (addr, _home, stop) = start_with_origins(vec!["https://volunteer.example".into()]).await;
    // Native workers send no Origin; the master's own page sends its own.
    assert_eq!(handshake(&addr, None).await, Ok(()));
    assert_eq!(
        handshake(&addr, Some(&format!("http://{addr}"))).await,
        Ok(())
    );
    assert_eq!(
        handshake(&addr, Some("https://volunteer.example")).await,
        Ok(())
    );
    for origin in [
        "http://evil.example",
        "https://volunteer.example:8443",
        "null",
    ] {
        let (status, body) = handshake(&addr, Some(origin)).await.unwrap_err();
        assert_eq!(status, 403, "{origin}");
        assert_eq!(body["error"]["code"], "forbidden", "{origin}: {body}");
    }
    // A welcomed session from the master's own origin speaks the protocol as usual.
    let _peer = Peer::join(&format!("ws://{addr}/ws"), "native-1", 1).await;
    let _ = stop.send(());
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_the_right_headers() {
    require_web_build();
    let (addr, _home, stop) = start_with_origins(Vec::new()).await;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let addr = addr.clone();
        async move {
            client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap()
        }
    };
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };

    let page = get("/".into()).await;
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let csp = header(&page, "content-security-policy");
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");

    let dist = repo_root().join("frontend/dist");
    let mut seen_wasm = false;
    for entry in std::fs::read_dir(&dist).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let response = get(format!("/{name}")).await;
        assert_eq!(response.status().as_u16(), 200, "{name}");
        let cache = header(&response, "cache-control");
        let content_type = header(&response, "content-type");
        if name.ends_with(".html") || name.ends_with(".json") {
            assert_eq!(cache, "no-cache", "{name}");
        } else {
            assert_eq!(cache, "public, max-age=31536000, immutable", "{name}");
        }
        if name.ends_with(".wasm") {
            seen_wasm = true;
            assert_eq!(content_type, "application/wasm");
            let bytes = response.bytes().await.unwrap();
            assert_eq!(&bytes[..4], b"\0asm");
        } else if name.ends_with(".js") {
            assert_eq!(content_type, "text/javascript; charset=utf-8", "{name}");
        }
    }
    assert!(seen_wasm, "no .wasm in {}", dist.display());
    let missing = get("/app.0000000000000000.js".into()).await;
    assert_eq!(missing.status().as_u16(), 404);
    let _ = stop.send(());
}
