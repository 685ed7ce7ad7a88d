//! WASI command modules through a real worker session: the example programs built by
//! `cargo xtask modules` (C, Rust, Zig; the raw-ABI C and AssemblyScript modules beside them)
//! give their answers, deterministically where they read the clock and random bytes, and the
//! hostile programs (reading a file, opening a socket, spinning, exiting 3, flooding standard
//! output with 100 MiB) each fail with a clear text while the worker goes on.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Connection, FakeMaster, RunningWorker};
use grid_protocol::{LeaseId, MasterMessage, Outcome, OutputMode, Task, WorkerMessage};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// An example module built by `cargo xtask modules` into `<target>/task-modules/`.
fn example(name: &str) -> Vec<u8> {
    // Test executables live in <target>/<profile>/deps.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap();
    let path = target.join("task-modules").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{} cannot be read ({error}): build the example modules with `cargo xtask modules` \
             (cargo xtask test does)",
            path.display()
        )
    })
}

fn assign(
    lease: LeaseId,
    id: &str,
    timeout_ms: u32,
    output: OutputMode,
    input: Value,
) -> MasterMessage {
    MasterMessage::Assign {
        lease,
        task: Task::Module {
            id: id.to_owned(),
            timeout_ms,
            max_memory_mb: 64,
            output,
        },
        input,
        deadline_seconds: 600,
    }
}

async fn collect(conn: &mut Connection, count: usize) -> BTreeMap<LeaseId, Outcome> {
    let mut results = BTreeMap::new();
    while results.len() < count {
        match conn.recv().await {
            WorkerMessage::Result { lease, outcome } => {
                results.insert(lease, outcome);
            }
            other => panic!("expected results, got {other:?}"),
        }
    }
    results
}

fn err(text: &str) -> Outcome {
    Outcome::Err(text.to_owned())
}

const JSON: OutputMode = OutputMode::Json;

#[tokio::test]
async fn example_programs_in_c_rust_and_zig_answer_like_any_module() {
    let (master, url) = FakeMaster::bind().await;
    let hailstone = master.serve_module(&example("hailstone"));
    let wordcount = master.serve_module(&example("wordcount"));
    let primes = master.serve_module(&example("primes-zig"));
    let sum_squares = master.serve_module(&example("sum-squares-raw"));
    let triangular = master.serve_module(&example("triangular-as"));
    let dice = master.serve_module(&example("dice"));
    let mut worker = RunningWorker::spawn(vec![url], "native-test-wasi-examples", 2);
    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.welcome().await;

    let text = json!({"text": "The cat and the hat. THE END"});
    for (lease, id, output, input) in [
        (1, &hailstone, JSON, json!({"n": 27})),
        (2, &hailstone, JSON, json!({"m": 1})),
        (3, &wordcount, JSON, text.clone()),
        (4, &wordcount, JSON, json!([1])),
        (5, &primes, JSON, json!({"start": 1, "end": 100_000})),
        (6, &sum_squares, JSON, json!(3_000_000)),
        (7, &sum_squares, JSON, json!("x")),
        (8, &triangular, JSON, json!(1_000_000_000)),
        (9, &hailstone, OutputMode::Text, json!({"n": 1})),
        (10, &dice, JSON, json!({"rolls": 5})),
        (11, &dice, JSON, json!({"rolls": 5})),
        (12, &dice, JSON, json!({"rolls": 6})),
    ] {
        conn.send(&assign(lease, id, 30_000, output, input)).await;
    }
    let results = collect(&mut conn, 12).await;
    assert_eq!(
        results[&1],
        Outcome::Ok(json!({"n": 27, "peak": 9232, "steps": 111}))
    );
    assert_eq!(
        results[&2],
        err(
            r#"exit: the program exited with code 2; stderr: expected {"n": <positive integer>}, got {"m":1}"#
        )
    );
    assert_eq!(
        results[&3],
        Outcome::Ok(json!({
            "top": [["the", 3], ["and", 1], ["cat", 1], ["end", 1], ["hat", 1]],
            "words": 7
        }))
    );
    assert_eq!(
        results[&4],
        err(
            r#"exit: the program exited with code 2; stderr: expected a JSON object {"text": "..."}"#
        )
    );
    assert_eq!(results[&5], Outcome::Ok(json!({"count": 9592})));
    assert_eq!(
        results[&6],
        Outcome::Ok(json!(9_000_004_500_000_500_000_u64))
    );
    assert_eq!(
        results[&7],
        Outcome::Ok(json!({"error": "input must be an integer from 0 to 3000000"}))
    );
    assert_eq!(
        results[&8],
        Outcome::Ok(
            json!({"n": 1_000_000_000, "square": false, "triangular": 500_000_000_500_000_000_u64})
        )
    );
    // `"output": "text"`: standard output as it is, newline included.
    assert_eq!(
        results[&9],
        Outcome::Ok(json!("{\"n\":1,\"peak\":1,\"steps\":0}\n"))
    );
    // The clock is fixed; the random bytes are the chunk's: the same input draws the same
    // bytes, another input others.
    let Outcome::Ok(dice) = &results[&10] else {
        panic!("dice failed: {:?}", results[&10]);
    };
    assert_eq!(dice["time"], 1_767_225_600);
    assert_eq!(dice["monotonic_ns"], 0);
    assert_eq!(dice["random"].as_str().map(str::len), Some(32));
    assert_eq!(dice["rolls"].as_array().map(Vec::len), Some(5));
    assert_eq!(results[&11], results[&10]);
    let Outcome::Ok(other) = &results[&12] else {
        panic!("dice failed: {:?}", results[&12]);
    };
    assert_ne!(other["random"], dice["random"]);

    worker.shut_down();
    assert_eq!(conn.recv().await, WorkerMessage::Drain);
    conn.expect_close(CloseCode::Normal).await;
    worker.finished().await.unwrap();
}

#[tokio::test]
async fn hostile_programs_fail_with_clear_texts_and_the_worker_goes_on() {
    let (master, url) = FakeMaster::bind().await;
    let reads_file = master.serve_module(&example("hostile-reads-file"));
    let opens_socket = master.serve_module(&example("hostile-opens-socket"));
    let spins = master.serve_module(&example("hostile-spins"));
    let exits_3 = master.serve_module(&example("hostile-exits-3"));
    let floods = master.serve_module(&example("hostile-floods-stdout"));
    let hailstone = master.serve_module(&example("hailstone"));
    let mut worker = RunningWorker::spawn(vec![url], "native-test-wasi-hostile", 2);
    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.welcome().await;

    let started = Instant::now();
    for (lease, id, timeout_ms) in [
        (1, &reads_file, 30_000),
        (2, &opens_socket, 30_000),
        (3, &spins, 300),
        (4, &exits_3, 30_000),
        (5, &floods, 30_000),
        (6, &hailstone, 30_000),
    ] {
        conn.send(&assign(lease, id, timeout_ms, JSON, json!({"n": 7})))
            .await;
    }
    let results = collect(&mut conn, 6).await;
    assert_eq!(
        results[&1],
        err(
            "exit: the program exited with code 1; stderr: fopen(/etc/passwd): Capabilities \
             insufficient\npath_open(3, etc/passwd): errno 76\nfd_prestat_get(3): errno 8"
        )
    );
    assert_eq!(
        results[&2],
        err(
            "exit: the program exited with code 1; stderr: sock_accept(3): errno 76\n\
             sock_shutdown(0): errno 76\npoll_oneoff(sleep 1 s): errno 52"
        )
    );
    assert_eq!(
        results[&3],
        err("timeout: the chunk ran longer than 300 ms")
    );
    assert_eq!(
        results[&4],
        err(
            "exit: the program exited with code 3; stderr: giving up: the input is not to my liking"
        )
    );
    assert_eq!(
        results[&5],
        err(
            "output limit exceeded: the program wrote more than 16777216 bytes to standard \
             output; stderr: flooding"
        )
    );
    assert_eq!(
        results[&6],
        Outcome::Ok(json!({"n": 7, "peak": 52, "steps": 16}))
    );
    // No sleeping in poll_oneoff (its errno is asserted above), no waiting on anything: a
    // loose bound that only catches a hang, since a loaded 2-core machine compiles the six
    // modules in a debug build in anything from 5 to 25 s (CI measured 22 s once).
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );

    // The worker is none the worse.
    conn.send(&assign(7, &spins, 50, JSON, json!(1))).await;
    conn.send(&assign(8, &hailstone, 30_000, JSON, json!({"n": 1})))
        .await;
    let again = collect(&mut conn, 2).await;
    assert_eq!(again[&7], err("timeout: the chunk ran longer than 50 ms"));
    assert_eq!(
        again[&8],
        Outcome::Ok(json!({"n": 1, "peak": 1, "steps": 0}))
    );

    worker.shut_down();
    assert_eq!(conn.recv().await, WorkerMessage::Drain);
    conn.expect_close(CloseCode::Normal).await;
    worker.finished().await.unwrap();
}
