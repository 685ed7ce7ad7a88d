//! PostgreSQL restarted mid-job: the master reconnects and loses nothing. Alone in its test
//! binary because it restarts the server every other test talks to.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ADMIN_TOKEN, Api, Backend, Home, primes_inputs, spawn_server_process, spawn_worker};
use serde_json::{Value, json};

async fn done_chunks(api: &Api, job: i64) -> i64 {
    match api
        .client
        .get(format!("{}/api/v1/jobs/{job}", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
    {
        Ok(response) => response
            .json::<Value>()
            .await
            .map(|body| body["chunks"]["done"].as_i64().unwrap_or(0))
            .unwrap_or(0),
        Err(_) => 0,
    }
}

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
    let inputs = primes_inputs(400_000_000_000, 400_000_000_000 + 60 * 40_000_000, 60);
    let expected: u64 = inputs
        .iter()
        .map(|input| {
            grid_kernels::run("primes", input).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let identities = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&ws, 1, &identities.path().join("w1.id"));
    let _w2 = spawn_worker(&ws, 1, &identities.path().join("w2.id"));
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    while done_chunks(&api, job).await < 5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    assert!(
        done_chunks(&api, job).await < 60,
        "the job ended before the restart"
    );

    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(job).await;
    let indexes: Vec<u64> = results
        .iter()
        .map(|l| l["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        (0..60).collect::<Vec<_>>(),
        "every chunk exactly once"
    );
    let total: u64 = results
        .iter()
        .map(|l| l["output"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, expected);
}
