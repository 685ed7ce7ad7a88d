//! The submit path's memory against a real `grid-server` process (finding M5 of the security
//! review): a body built to amplify into tens of millions of JSON values is refused quickly
//! while the process's peak resident memory (VmHWM) stays within a bound, and a valid large
//! submission still goes through.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Backend, Home, memory_kib, spawn_server_process};
use serde_json::Value;

/// How much the master's peak memory may grow for one refused 60 MB body: the body itself,
/// held once, and one input's worth of values (the old parser built a `Value` per zero: about
/// 30 million of them, over 1 GB).
const GROWTH_BOUND_KIB: u64 = 160 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amplifying_submission_is_refused_quickly_with_bounded_memory() {
    let home = Home::new(Backend::Sqlite).await;
    let (server, addr) = spawn_server_process(&home, "127.0.0.1:0");
    let pid = server.child.id();
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/jobs");

    // Warm the process up with a small job, so the baseline includes a served request.
    let response = client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"kernel": "echo", "inputs": [1, 2, 3]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let before = memory_kib(pid, "VmHWM:");

    // `{"kernel":"echo","inputs":[[0,0,0,...]]}`: 60 MB, under the 64 MiB body limit.
    let zeros = 30_000_000;
    let mut body = Vec::with_capacity(2 * zeros + 64);
    body.extend_from_slice(br#"{"kernel":"echo","inputs":[["#);
    for i in 0..zeros {
        if i > 0 {
            body.push(b',');
        }
        body.push(b'0');
    }
    body.extend_from_slice(b"]]}");
    let sent = body.len();
    let started = Instant::now();
    let response = client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inputs[0] is more than"),
        "{answer}"
    );
    let after = memory_kib(pid, "VmHWM:");
    let growth = after.saturating_sub(before);
    println!(
        "amplifying body of {sent} bytes refused in {elapsed:?}; master peak RSS {before} KiB \
         before, {after} KiB after (+{growth} KiB)"
    );
    assert!(
        growth < GROWTH_BOUND_KIB,
        "the master's peak memory grew by {growth} KiB for one refused body"
    );
    assert!(
        elapsed < Duration::from_secs(20),
        "refusing it took {elapsed:?}"
    );

    // A valid large submission still works: 50,000 small inputs (a debug build on a loaded
    // 2-core CI machine took over the 30 s request timeout to store 200,000).
    let count = 50_000;
    let mut body = br#"{"kernel":"echo","redundancy":1,"inputs":["#.to_vec();
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!(r#"{{"i":{i},"tag":"large"}}"#).as_bytes());
    }
    body.extend_from_slice(b"]}");
    let started = Instant::now();
    let response = client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let job: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["chunks"]["total"], count);
    println!("valid submission of {count} inputs stored in {elapsed:?}");
    drop(server);
}
