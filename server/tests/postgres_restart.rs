//! PostgreSQL restarted mid-job: the master reconnects and loses nothing. The one test binary
//! besides `integration`, because it restarts the server every other test talks to (cargo runs
//! test binaries one after another, the tests inside one binary side by side).
#![allow(clippy::unwrap_used)]

#[path = "integration/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    ADMIN_TOKEN, Api, Backend, Home, primes_inputs, primes_reference, primes_total,
    spawn_server_process, spawn_worker,
};
use serde_json::json;

/// Restart the local PostgreSQL cluster (Debian's tools, as on this project's machines).
fn restart_postgres() {
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("this test restarts the local PostgreSQL cluster: /etc/postgresql is missing")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for version in versions {
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "restart"])
            .status()
            .expect("pg_ctlcluster");
        assert!(status.success(), "pg_ctlcluster restart failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_job_loses_nothing() {
    let home = Home::new(Backend::Postgres).await;
    let (_master, addr) = spawn_server_process(&home, "127.0.0.1:0");
    let api = Api::new(&format!("http://{addr}"), ADMIN_TOKEN);
    let ws = format!("ws://{addr}/ws");
    // Enough chunks that the job outlasts the restart on a fast machine (60 finished within
    // the restart's few seconds once): about 15 s of work for the two workers.
    const CHUNKS: u64 = 240;
    let inputs = primes_inputs(
        400_000_000_000,
        400_000_000_000 + CHUNKS * 40_000_000,
        CHUNKS,
    );
    let expected = primes_reference(&inputs);
    let identities = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&ws, 1, &identities.path().join("w1.id"));
    let _w2 = spawn_worker(&ws, 1, &identities.path().join("w2.id"));
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    while api.done_chunks(job).await < 5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    assert!(
        api.done_chunks(job).await < CHUNKS as i64,
        "the job ended before the restart"
    );

    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(job).await;
    assert_eq!(primes_total(&results, CHUNKS, None), expected);
}
