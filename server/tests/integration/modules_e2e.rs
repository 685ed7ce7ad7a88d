//! Uploaded task modules run by real `grid-worker` processes (wasmtime) over real sockets, on
//! both backends: verified results of a module job, and hostile modules — an endless loop,
//! unbounded memory growth, a trap — each failing its chunks with the same clear error on
//! every worker while the workers survive and a normal job beside them completes.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::modules::{echo, endless_loop, example, memory_hog, trap};
use common::{
    ADMIN_TOKEN, Api, Backend, InProcessServer, primes_inputs, primes_reference, primes_total,
    spawn_worker,
};
use serde_json::{Value, json};

on_both_backends!(
    hostile_modules_fail_cleanly_and_normal_work_goes_on,
    example_modules_in_rust_and_wat_are_verified_by_two_native_workers
);

async fn example_modules_in_rust_and_wat_are_verified_by_two_native_workers(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let home = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&server.ws(), 1, &home.path().join("w1.id"));
    let _w2 = spawn_worker(&server.ws(), 1, &home.path().join("w2.id"));

    let collatz = api.upload_module(example("collatz")).await;
    let fibonacci = api.upload_module(example("fibonacci")).await;
    let collatz_job = api
        .submit(json!({
            "module": collatz,
            "inputs": [
                {"start": 1, "end": 1000},
                {"start": 1, "end": 100_000},
                {"end": 10, "start": 1},
                {"start": 10, "end": 1},
                {"start": 1},
            ],
            "redundancy": 2,
            "max_memory_mb": 16,
        }))
        .await;
    let fibonacci_job = api
        .submit(json!({
            "module": fibonacci,
            "inputs": [0, 10, 90, 18_446_744_073_709_551_615_u64, "x"],
            "redundancy": 2,
        }))
        .await;

    assert_eq!(
        api.outputs(collatz_job, 2).await,
        vec![
            json!({"longest": {"n": 871, "steps": 178}}),
            json!({"longest": {"n": 77031, "steps": 350}}),
            json!({"longest": {"n": 9, "steps": 19}}),
            json!({"error": "end (1) must be greater than start (10)"}),
            json!({"error": "invalid input: missing field `end` at line 1 column 11"}),
        ]
    );
    let refused = json!({"error": "input must be a JSON integer from 0 to 18446744073709551615"});
    assert_eq!(
        api.outputs(fibonacci_job, 2).await,
        vec![
            json!(0),
            json!(55),
            json!(2_880_067_194_370_816_120_u64),
            json!(800_812_746_651_928_290_u64),
            refused,
        ]
    );

    // A module starting above the job's memory cap is not run: every worker says so alike.
    let starved = api
        .submit(json!({"module": collatz, "inputs": [{"start": 1, "end": 10}], "max_memory_mb": 1}))
        .await;
    api.assert_all_failed_with(
        starved,
        1,
        "memory limit exceeded: the module needs 2 MiB at start; the limit is 1 MiB",
    )
    .await;
    server.stop().await;
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

    api.assert_all_failed_with(loop_job, 2, "timeout: the chunk ran longer than 300 ms")
        .await;
    // One page at a time up to the 16 MiB cap, then the failed grow leads to `unreachable`.
    api.assert_all_failed_with(
        hog_job,
        1,
        "trap: unreachable instruction executed (memory in use: 16 of 16 MiB)",
    )
    .await;
    api.assert_all_failed_with(
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
