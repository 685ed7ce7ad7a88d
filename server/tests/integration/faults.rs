//! Fault tests with real processes, bounded in time, each asserting on the final results:
//! 30% of the workers killed at random, the master killed with `kill -9` at random moments ten
//! times during one job. (PostgreSQL restarted mid-job is in `postgres_restart.rs`, its own
//! test binary, so the restart cannot disturb other tests.)
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{
    ADMIN_TOKEN, Api, Backend, Home, InProcessServer, primes_inputs, primes_reference,
    primes_total, spawn_server_process, spawn_worker,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

on_both_backends!(
    thirty_percent_of_workers_killed_at_random,
    the_master_killed_ten_times_during_one_job,
);

async fn thirty_percent_of_workers_killed_at_random(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let inputs = primes_inputs(200_000_000_000, 200_000_000_000 + 60 * 30_000_000, 60);
    let expected = primes_reference(&inputs);
    let identities = tempfile::tempdir().unwrap();
    let mut workers: Vec<_> = (0..10)
        .map(|i| spawn_worker(&server.ws(), 1, &identities.path().join(format!("w{i}.id"))))
        .collect();
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    let mut rng = StdRng::seed_from_u64(30);
    for _ in 0..3 {
        let progress = api.done_chunks(job).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        let victim = rng.random_range(0..workers.len());
        workers.remove(victim).kill();
        assert!(
            progress < 60,
            "the job ended before the workers could be killed"
        );
    }
    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(primes_total(&api.results(job).await, 60, Some(2)), expected);
    server.stop().await;
}

async fn the_master_killed_ten_times_during_one_job(backend: Backend) {
    let home = Home::new(backend).await;
    let (mut master, addr) = spawn_server_process(&home, "127.0.0.1:0");
    let api = Api::new(&format!("http://{addr}"), ADMIN_TOKEN);
    let ws = format!("ws://{addr}/ws");
    let inputs = primes_inputs(300_000_000_000, 300_000_000_000 + 100 * 30_000_000, 100);
    let expected = primes_reference(&inputs);
    let identities = tempfile::tempdir().unwrap();
    let _workers: Vec<_> = (0..3)
        .map(|i| spawn_worker(&ws, 1, &identities.path().join(format!("w{i}.id"))))
        .collect();
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    let mut rng = StdRng::seed_from_u64(10);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
        master.kill();
        master = spawn_server_process(&home, &addr.to_string()).0;
    }
    let finished = api.wait_finished(job, Duration::from_secs(240)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(
        primes_total(&api.results(job).await, 100, Some(2)),
        expected
    );
}
