//! Uploaded task modules run by real `grid-worker` processes (wasmtime) over real sockets, on
//! both backends: verified results of a module job, and hostile modules — an endless loop,
//! unbounded memory growth, a trap — each failing its chunks with the same clear error on
//! every worker while the workers survive and a normal job beside them completes.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::Duration;

use common::modules::{echo, endless_loop, memory_hog, trap};
use common::{
    ADMIN_TOKEN, Api, Backend, InProcessServer, primes_inputs, primes_reference, primes_total,
    spawn_worker,
};
use serde_json::{Value, json};

on_both_backends!(hostile_modules_fail_cleanly_and_normal_work_goes_on);

/// Every chunk of a finished job failed with exactly `error`, agreed by the workers.
async fn assert_all_failed_with(api: &Api, job: i64, chunks: usize, error: &str) {
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "failed", "{finished}");
    let results = api.results(job).await;
    assert_eq!(results.len(), chunks, "{results:?}");
    for line in &results {
        assert_eq!(line["error"], error, "{line}");
    }
}

async fn hostile_modules_fail_cleanly_and_normal_work_goes_on(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let home = tempfile::tempdir().unwrap();
    let mut workers = [
        spawn_worker(&server.ws(), 2, &home.path().join("w1.id")),
        spawn_worker(&server.ws(), 2, &home.path().join("w2.id")),
    ];

    let looping = api.upload_module(endless_loop()).await;
    let hog = api.upload_module(memory_hog()).await;
    let trapping = api.upload_module(trap()).await;
    let echoing = api.upload_module(echo()).await;

    let primes = primes_inputs(0, 2_000_000, 8);
    let normal = api
        .submit(json!({"kernel": "primes", "inputs": primes, "redundancy": 2}))
        .await;
    let loop_job = api
        .submit(json!({"module": looping, "inputs": [1, 2], "timeout_ms": 300, "redundancy": 2}))
        .await;
    let hog_job = api
        .submit(json!({"module": hog, "inputs": [1], "max_memory_mb": 16, "redundancy": 2}))
        .await;
    let trap_job = api
        .submit(json!({"module": trapping, "inputs": [1], "redundancy": 2}))
        .await;
    let inputs = json!([{"b": 1, "a": [1, 2.5]}, "text", 42, null]);
    let echo_job = api
        .submit(json!({"module": echoing, "inputs": inputs, "redundancy": 2}))
        .await;

    assert_all_failed_with(
        &api,
        loop_job,
        2,
        "timeout: the chunk ran longer than 300 ms",
    )
    .await;
    // One page at a time up to the 16 MiB cap, then the failed grow leads to `unreachable`.
    assert_all_failed_with(
        &api,
        hog_job,
        1,
        "trap: unreachable instruction executed (memory in use: 16 of 16 MiB)",
    )
    .await;
    assert_all_failed_with(
        &api,
        trap_job,
        1,
        "trap: unreachable instruction executed (memory in use: 1 of 256 MiB)",
    )
    .await;

    let finished = api.wait_finished(echo_job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(echo_job).await;
    let outputs: Vec<&Value> = results.iter().map(|line| &line["output"]).collect();
    let expected: Vec<&Value> = inputs.as_array().unwrap().iter().collect();
    assert_eq!(outputs, expected);
    assert!(
        results.iter().all(|line| line["agreeing"] == 2),
        "{results:?}"
    );

    let finished = api.wait_finished(normal, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(normal).await;
    assert_eq!(
        primes_total(&results, 8, Some(2)),
        primes_reference(&primes)
    );

    // Both workers lived through all of it.
    for worker in &mut workers {
        assert!(
            worker.child.try_wait().unwrap().is_none(),
            "a worker exited"
        );
    }
    server.stop().await;
}
