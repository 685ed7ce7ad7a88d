//! Replicated PostgreSQL: a primary with a synchronous streaming standby, both created by the
//! test on their own ports under a temporary directory (`initdb`, `pg_basebackup`), two
//! masters given both hosts in one URL, native workers that know both masters. The primary's
//! postmaster is killed with SIGKILL mid-job and the standby promoted: the masters find the new
//! primary by themselves, the job completes with every chunk exactly once, and no result
//! acknowledged before the kill is lost.
//!
//! A binary of its own: it starts and kills PostgreSQL servers (its own, but the load of two
//! more clusters would slow the integration tests that run side by side).
#![allow(clippy::unwrap_used)]

#[path = "integration/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::clusters::primary_and_standby;
use common::{
    ADMIN_TOKEN, Api, Home, primes_inputs, primes_reference, primes_total, spawn_server_process,
    spawn_workers_across,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_mid_job_and_the_standby_promoted_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (primary, standby) = primary_and_standby(root.path()).await;

    // One URL names both hosts, as an operator would write it.
    let home = Home::Url(format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    ));
    let (_master_a, addr_a) = spawn_server_process(&home, "127.0.0.1:0");
    let (_master_b, addr_b) = spawn_server_process(&home, "127.0.0.1:0");
    let api = Api::new(&format!("http://{addr_a}"), ADMIN_TOKEN);
    let api_b = Api::new(&format!("http://{addr_b}"), ADMIN_TOKEN);
    let ws_a = format!("ws://{addr_a}/ws");
    let ws_b = format!("ws://{addr_b}/ws");
    let identities = tempfile::tempdir().unwrap();
    let _workers = spawn_workers_across([&ws_a, &ws_b], 3, identities.path());

    // About 25 s of work for the three workers.
    const CHUNKS: u64 = 300;
    let inputs = primes_inputs(
        300_000_000_000,
        300_000_000_000 + CHUNKS * 50_000_000,
        CHUNKS,
    );
    let expected = primes_reference(&inputs);
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    api.wait_progress(job, 10).await;

    // What the masters acknowledged before the primary died: it must all survive.
    let acknowledged = api.done_chunks(job).await;
    let before_kill = Instant::now();
    tokio::task::spawn_blocking(move || {
        primary.kill_postmaster();
        primary
    })
    .await
    .unwrap();
    assert!(
        acknowledged < CHUNKS as i64,
        "the job ended before the kill"
    );
    // An operator (or a failover manager) notices and promotes the standby.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let standby = tokio::task::spawn_blocking(move || {
        standby.promote();
        standby
    })
    .await
    .unwrap();
    let promoted = Instant::now();

    // Both masters write again through the new primary, with nothing acknowledged lost.
    let mut recovered = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while recovered.is_none() {
        let (status_a, body_a) = api.get(&format!("/api/v1/jobs/{job}")).await;
        let (status_b, body_b) = api_b.get(&format!("/api/v1/jobs/{job}")).await;
        if status_a == 200 && status_b == 200 {
            let done_a = body_a["chunks"]["done"].as_i64().unwrap();
            let done_b = body_b["chunks"]["done"].as_i64().unwrap();
            assert!(
                done_a >= acknowledged && done_b >= acknowledged,
                "acknowledged results lost: {acknowledged} done before, now {done_a} and {done_b}"
            );
            if done_a > acknowledged + 3 {
                recovered = Some(promoted.elapsed());
            }
        }
        assert!(Instant::now() < deadline, "no progress after the promotion");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "replication: primary killed {:.1} s before the promotion; progress again {:.2} s after it",
        (promoted - before_kill).as_secs_f64(),
        recovered.unwrap().as_secs_f64()
    );

    let finished = api.wait_finished(job, Duration::from_secs(240)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api_b.results(job).await;
    assert_eq!(primes_total(&results, CHUNKS, None), expected);
    drop(standby);
}
