//! End to end with real `grid-worker` processes over real sockets and a real PostgreSQL:
//! verified results, a lying peer, a worker killed mid-job, the master killed and restarted.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    ADMIN_TOKEN, Api, Backend, Home, InProcessServer, Peer, primes_inputs, primes_reference,
    primes_total, spawn_server_process, spawn_worker,
};
use grid_protocol::{MasterMessage, Outcome, WorkerMessage};
use serde_json::{Value, json};

on_both_backends!(
    primes_to_ten_to_the_eight_verified_by_two_native_workers,
    a_lying_peer_is_outvoted_and_counted_invalid,
    a_worker_killed_mid_job_loses_nothing,
    the_master_killed_and_restarted_mid_job_loses_nothing,
);

async fn primes_to_ten_to_the_eight_verified_by_two_native_workers(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let home = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&server.ws(), 1, &home.path().join("w1.id"));
    let _w2 = spawn_worker(&server.ws(), 1, &home.path().join("w2.id"));

    let job = api
        .submit(json!({
            "kernel": "primes",
            "inputs": primes_inputs(0, 100_000_000, 100),
            "redundancy": 2,
            "name": "pi(10^8)",
        }))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(
        finished["chunks"],
        json!({"total": 100, "done": 100, "failed": 0, "revised": 0})
    );
    assert_eq!(finished["replicas"]["invalid"], 0);
    let results = api.results(job).await;
    assert!(
        results.iter().all(|line| line["agreeing"] == 2),
        "every chunk agreed by two"
    );
    assert_eq!(primes_total(&results, 100, None), 5_761_455);
    // Two distinct workers really computed each chunk.
    let distinct = server
        .store
        .count(&format!(
            "SELECT min(n) FROM (SELECT count(DISTINCT worker_id) AS n FROM replicas
             WHERE job_id = {job} AND verdict = 'valid' GROUP BY chunk_idx) per_chunk"
        ))
        .await;
    assert_eq!(distinct, 2);
    server.stop().await;
}

async fn a_lying_peer_is_outvoted_and_counted_invalid(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let inputs = primes_inputs(0, 20_000_000, 12);
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;

    // The liar joins first, so it holds a replica of the first chunks, and answers instantly.
    let mut liar = Peer::join(&server.ws(), "liar", 4).await;
    let liar_task = tokio::spawn(async move {
        let mut lies = 0u32;
        while let Some(message) = liar.recv().await {
            if let MasterMessage::Assign { lease, .. } = message {
                liar.send(&WorkerMessage::Result {
                    lease,
                    outcome: Outcome::Ok(json!({"count": 1})),
                })
                .await;
                lies += 1;
            }
        }
        lies
    });
    wait_lies(&server, 4).await;
    let home = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&server.ws(), 1, &home.path().join("w1.id"));
    let _w2 = spawn_worker(&server.ws(), 1, &home.path().join("w2.id"));

    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(job).await;
    assert_eq!(primes_total(&results, 12, None), primes_reference(&inputs));
    let liar_returned = server
        .store
        .count(&format!(
            "SELECT count(*) FROM replicas
             WHERE job_id = {job} AND worker_id = 'liar' AND state = 'returned'"
        ))
        .await;
    let liar_invalid = server
        .store
        .count(&format!(
            "SELECT count(*) FROM replicas
             WHERE job_id = {job} AND worker_id = 'liar' AND verdict = 'invalid'"
        ))
        .await;
    assert!(
        liar_returned >= 4,
        "the liar answered {liar_returned} times"
    );
    assert_eq!(liar_invalid, liar_returned, "every lie is counted invalid");
    assert_eq!(finished["replicas"]["invalid"], json!(liar_returned));
    server.stop().await;
    let _ = liar_task.await;
}

async fn wait_lies(server: &InProcessServer, at_least: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lies = server
            .store
            .count("SELECT count(*) FROM replicas WHERE worker_id = 'liar' AND state = 'returned'")
            .await;
        if lies >= at_least {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Chunks big enough (tens of milliseconds each) that a job lasts a few seconds.
fn slow_inputs() -> Vec<Value> {
    primes_inputs(100_000_000_000, 100_000_000_000 + 60 * 30_000_000, 60)
}

async fn a_worker_killed_mid_job_loses_nothing(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let inputs = slow_inputs();
    let expected = primes_reference(&inputs);
    let home = tempfile::tempdir().unwrap();
    let mut victim = spawn_worker(&server.ws(), 1, &home.path().join("victim.id"));
    let _w2 = spawn_worker(&server.ws(), 1, &home.path().join("w2.id"));
    let _w3 = spawn_worker(&server.ws(), 1, &home.path().join("w3.id"));
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    api.wait_progress(job, 5).await;
    victim.kill();

    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert!(
        finished["replicas"]["expired"].as_i64().unwrap() >= 1,
        "the killed worker's leases were taken back: {finished}"
    );
    let results = api.results(job).await;
    assert_eq!(primes_total(&results, 60, None), expected);
    server.stop().await;
}

async fn the_master_killed_and_restarted_mid_job_loses_nothing(backend: Backend) {
    let home = Home::new(backend).await;
    let (mut master, addr) = spawn_server_process(&home, "127.0.0.1:0");
    let api = Api::new(&format!("http://{addr}"), ADMIN_TOKEN);
    let ws = format!("ws://{addr}/ws");
    let inputs = slow_inputs();
    let expected = primes_reference(&inputs);
    let identities = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&ws, 1, &identities.path().join("w1.id"));
    let _w2 = spawn_worker(&ws, 1, &identities.path().join("w2.id"));
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;

    api.wait_progress(job, 10).await;
    master.kill();
    let (_master, _) = spawn_server_process(&home, &addr.to_string());

    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(job).await;
    assert_eq!(primes_total(&results, 60, None), expected);
    // Exactly one accepted output per chunk, and two distinct agreeing workers behind each.
    let unique: BTreeSet<u64> = results
        .iter()
        .map(|line| line["index"].as_u64().unwrap())
        .collect();
    assert_eq!(unique.len(), 60);
    assert!(results.iter().all(|line| line["agreeing"] == 2));
}
