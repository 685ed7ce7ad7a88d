//! Task modules through a real worker session: the worker downloads each module from the fake
//! master's HTTP side once, runs its chunks under wasmtime, fails hostile ones cleanly beside
//! normal work, and hands back leases whose module it cannot get.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{Connection, FakeMaster, RunningWorker};
use grid_protocol::{LeaseId, MasterMessage, Outcome, Task, WorkerMessage};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A module following the task ABI whose `grid_run` (params `$ptr`, `$len`) is `body`.
fn module(body: &str, extra: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 1)
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

/// Returns its input.
fn echo_module() -> Vec<u8> {
    module(
        "(i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                 (i64.extend_i32_u (local.get $len)))",
        "",
    )
}

fn assign_module(
    lease: LeaseId,
    id: &str,
    timeout_ms: u32,
    max_memory_mb: u32,
    input: Value,
) -> MasterMessage {
    MasterMessage::Assign {
        lease,
        task: Task::Module {
            id: id.to_owned(),
            timeout_ms,
            max_memory_mb,
        },
        input,
        deadline_seconds: 600,
    }
}

fn assign_kernel(lease: LeaseId, kernel: &str, input: Value) -> MasterMessage {
    MasterMessage::Assign {
        lease,
        task: Task::kernel(kernel),
        input,
        deadline_seconds: 600,
    }
}

/// Read messages until `count` results have come; returns them by lease, and the other
/// messages in order.
async fn collect_results(
    conn: &mut Connection,
    count: usize,
) -> (BTreeMap<LeaseId, Outcome>, Vec<WorkerMessage>) {
    let (mut results, mut others) = (BTreeMap::new(), Vec::new());
    while results.len() < count {
        match conn.recv().await {
            WorkerMessage::Result { lease, outcome } => {
                assert!(
                    results.insert(lease, outcome).is_none(),
                    "lease {lease} twice"
                );
            }
            other => others.push(other),
        }
    }
    (results, others)
}

fn err(text: &str) -> Outcome {
    Outcome::Err(text.to_owned())
}

async fn shut_down(mut worker: RunningWorker, mut conn: Connection) {
    worker.shut_down();
    assert_eq!(conn.recv().await, WorkerMessage::Drain);
    conn.expect_close(CloseCode::Normal).await;
    worker.finished().await.unwrap();
}

#[tokio::test]
async fn a_module_is_downloaded_once_while_the_session_goes_on() {
    let (master, url) = FakeMaster::bind().await;
    let echo = master.serve_module(&echo_module());
    master.answer_module_requests(false);
    let worker = RunningWorker::spawn(vec![url], "native-test-module-once", 2);
    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.welcome().await;

    for lease in 1..=3 {
        conn.send(&assign_module(lease, &echo, 1000, 16, json!({"n": lease})))
            .await;
    }
    conn.send(&MasterMessage::Revoke { leases: vec![3] }).await;
    // The download hangs: kernels still run and the session still answers.
    conn.send(&assign_kernel(4, "echo", json!("kernel"))).await;
    assert_eq!(
        conn.recv().await,
        WorkerMessage::Result {
            lease: 4,
            outcome: Outcome::Ok(json!("kernel"))
        }
    );
    assert_eq!(conn.sync().await, []);

    master.answer_module_requests(true);
    let (results, others) = collect_results(&mut conn, 2).await;
    assert_eq!(others, []);
    assert_eq!(results[&1], Outcome::Ok(json!({"n": 1})));
    assert_eq!(results[&2], Outcome::Ok(json!({"n": 2})));
    // Lease 3 was revoked while it waited: no result, no release.
    assert_eq!(conn.sync().await, []);
    assert_eq!(master.module_requests(), 1);

    // Compiled once: later chunks run from the cache.
    conn.send(&assign_module(5, &echo, 1000, 16, json!([5])))
        .await;
    assert_eq!(
        conn.recv().await,
        WorkerMessage::Result {
            lease: 5,
            outcome: Outcome::Ok(json!([5]))
        }
    );
    assert_eq!(master.module_requests(), 1);

    shut_down(worker, conn).await;
}

#[tokio::test]
async fn hostile_modules_fail_cleanly_beside_normal_work() {
    let (master, url) = FakeMaster::bind().await;
    let endless = master.serve_module(&module("(loop $l (br $l)) unreachable", ""));
    let greedy = master.serve_module(&module(
        "(block $full (loop $more
           (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
           (br $more)))
         unreachable",
        "",
    ));
    let trapping = master.serve_module(&module(
        "(i64.extend_i32_u (i32.div_u (i32.const 1) (i32.const 0)))",
        "",
    ));
    let echo = master.serve_module(&echo_module());
    let worker = RunningWorker::spawn(vec![url], "native-test-hostile", 2);
    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.welcome().await;

    conn.send(&assign_module(1, &endless, 300, 16, json!(1)))
        .await;
    conn.send(&assign_module(2, &greedy, 5000, 16, json!(2)))
        .await;
    conn.send(&assign_module(3, &trapping, 5000, 64, json!(3)))
        .await;
    conn.send(&assign_kernel(4, "primes", json!({"start": 0, "end": 100})))
        .await;
    conn.send(&assign_module(
        5,
        &echo,
        5000,
        16,
        json!({"b": 1, "a": [true]}),
    ))
    .await;
    let (results, others) = collect_results(&mut conn, 5).await;
    assert_eq!(others, []);
    assert_eq!(
        results[&1],
        err("timeout: the chunk ran longer than 300 ms")
    );
    assert_eq!(
        results[&2],
        err("trap: unreachable instruction executed (memory in use: 16 of 16 MiB)")
    );
    assert_eq!(
        results[&3],
        err("trap: integer divide by zero (memory in use: 1 of 64 MiB)")
    );
    assert_eq!(results[&4], Outcome::Ok(json!({"count": 25})));
    assert_eq!(results[&5], Outcome::Ok(json!({"a": [true], "b": 1})));

    // The worker is none the worse: the endless module times out again, the echo still works.
    conn.send(&assign_module(6, &endless, 50, 16, json!(6)))
        .await;
    conn.send(&assign_module(7, &echo, 5000, 16, json!(7)))
        .await;
    let (results, _) = collect_results(&mut conn, 2).await;
    assert_eq!(results[&6], err("timeout: the chunk ran longer than 50 ms"));
    assert_eq!(results[&7], Outcome::Ok(json!(7)));

    shut_down(worker, conn).await;
}

#[tokio::test]
async fn leases_whose_module_cannot_be_had_are_handed_back() {
    let (master, url) = FakeMaster::bind().await;
    // Never uploaded: the master answers 404.
    let missing = grid_task_abi::module_id(b"never uploaded");
    // Served bytes that hash to something else.
    let mismatched = grid_task_abi::module_id(b"the bytes the id was made of");
    master.serve_as(&mismatched, &echo_module());
    // Not WebAssembly at all, under its true hash.
    let garbage = master.serve_module(b"\0asm\x01\0\0\0 certainly not a module");
    let worker = RunningWorker::spawn(vec![url], "native-test-unfetchable", 1);
    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.welcome().await;

    conn.send(&assign_module(1, &missing, 1000, 16, json!(1)))
        .await;
    conn.send(&assign_module(2, &mismatched, 1000, 16, json!(2)))
        .await;
    conn.send(&assign_module(3, &garbage, 1000, 16, json!(3)))
        .await;
    conn.send(&assign_module(4, "sha256:not-a-hash", 1000, 16, json!(4)))
        .await;
    conn.send(&assign_kernel(5, "echo", json!(5))).await;

    let (mut released, mut kernel) = (Vec::new(), None);
    while released.len() < 4 || kernel.is_none() {
        match conn.recv().await {
            WorkerMessage::Release { leases } => released.extend(leases),
            WorkerMessage::Result { lease: 5, outcome } => kernel = Some(outcome),
            other => panic!("expected releases and one result, got {other:?}"),
        }
    }
    assert_eq!(kernel, Some(Outcome::Ok(json!(5))));
    released.sort_unstable();
    assert_eq!(released, [1, 2, 3, 4]);
    // Each fetch was tried (the bad id never leaves the worker).
    assert_eq!(master.module_requests(), 3);

    shut_down(worker, conn).await;
}

#[tokio::test]
async fn a_drain_hands_back_assignments_waiting_for_their_module() {
    let (master, url) = FakeMaster::bind().await;
    let echo = master.serve_module(&echo_module());
    master.answer_module_requests(false);
    let mut worker = RunningWorker::spawn(vec![url], "native-test-module-drain", 1);
    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.welcome().await;

    conn.send(&assign_module(8, &echo, 1000, 16, json!(8)))
        .await;
    assert_eq!(conn.sync().await, []);
    worker.shut_down();
    assert_eq!(conn.recv().await, WorkerMessage::Drain);
    assert_eq!(
        conn.recv().await,
        WorkerMessage::Release { leases: vec![8] }
    );
    conn.expect_close(CloseCode::Normal).await;
    worker.finished().await.unwrap();
}

#[tokio::test]
async fn the_module_cache_says_why_it_has_no_module() {
    use grid_task_abi::AbiError;
    use grid_worker::sandbox::{ChunkLimits, CompileError};
    use grid_worker::{ModuleCache, ModuleError};

    let (master, url) = FakeMaster::bind().await;
    let cache = ModuleCache::new(std::time::Duration::from_secs(5));

    let missing = grid_task_abi::module_id(b"never uploaded");
    match cache.get(&url, &missing).await.unwrap_err() {
        ModuleError::Status(status) => assert_eq!(status.as_u16(), 404),
        other => panic!("expected a 404, got {other}"),
    }
    let mismatched = grid_task_abi::module_id(b"the bytes the id was made of");
    master.serve_as(&mismatched, &echo_module());
    match cache.get(&url, &mismatched).await.unwrap_err() {
        ModuleError::HashMismatch { actual } => {
            assert_eq!(actual, grid_task_abi::module_id(&echo_module()));
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    let importing = master.serve_module(
        &wat::parse_str(r#"(module (import "env" "clock" (func)) (memory (export "memory") 1))"#)
            .unwrap(),
    );
    let error = cache.get(&url, &importing).await.unwrap_err();
    assert!(
        matches!(
            error,
            ModuleError::Compile(CompileError::Abi(AbiError::Import { .. }))
        ),
        "{error}"
    );
    assert!(cache.cached(&importing).is_none());

    let echo = master.serve_module(&echo_module());
    let module = cache.get(&url, &echo).await.unwrap();
    assert_eq!(
        module.run(&json!({"x": 1}), ChunkLimits::new(1000, 16)),
        Outcome::Ok(json!({"x": 1}))
    );
    assert!(cache.cached(&echo).is_some());
    assert_eq!(master.module_requests(), 4);
}
