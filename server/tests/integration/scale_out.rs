//! Scale-out: several masters share one PostgreSQL (claims and leases live in the database),
//! workers fail over between them, and losing a master loses no chunk.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    ADMIN_TOKEN, Api, Backend, Home, primes_inputs, primes_reference, spawn_server_process,
    spawn_worker_failover,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_one_killed_mid_job_loses_nothing() {
    let home = Home::new(Backend::Postgres).await;
    let (mut master_a, addr_a) = spawn_server_process(&home, "127.0.0.1:0");
    let (_master_b, addr_b) = spawn_server_process(&home, "127.0.0.1:0");
    let ws_a = format!("ws://{addr_a}/ws");
    let ws_b = format!("ws://{addr_b}/ws");
    let api_a = Api::new(&format!("http://{addr_a}"), ADMIN_TOKEN);
    let api_b = Api::new(&format!("http://{addr_b}"), ADMIN_TOKEN);

    // Half the workers prefer A, half prefer B; all know both.
    let identities = tempfile::tempdir().unwrap();
    let _workers: Vec<_> = (0..4)
        .map(|i| {
            let servers = if i % 2 == 0 {
                [ws_a.as_str(), ws_b.as_str()]
            } else {
                [ws_b.as_str(), ws_a.as_str()]
            };
            spawn_worker_failover(&servers, 1, &identities.path().join(format!("w{i}.id")))
        })
        .collect();

    let inputs = primes_inputs(100_000_000_000, 100_000_000_000 + 80 * 50_000_000, 80);
    let expected = primes_reference(&inputs);
    // Submitted through A; B serves it too, from the shared database.
    let job = api_a
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;

    // Both masters hand out work (B learns of the job by polling within a second) before A
    // dies mid-job.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = api_b.get(&format!("/api/v1/jobs/{job}")).await;
        let done = body["chunks"]["done"].as_i64().unwrap_or(0);
        if done >= 5 && home_masters(&home).await >= 2 {
            assert!(done < 80, "the job finished before A could be killed");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    master_a.kill();

    let finished = api_b.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api_b.results(job).await;
    let mut seen = BTreeMap::new();
    for line in &results {
        *seen.entry(line["index"].as_u64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 80, "no chunk lost");
    assert!(seen.values().all(|&n| n == 1), "no chunk twice");
    let total: u64 = results
        .iter()
        .map(|line| line["output"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, expected);
    assert!(results.iter().all(|line| line["agreeing"] == 2));
}

async fn home_masters(home: &Home) -> i64 {
    home.open()
        .await
        .count("SELECT count(DISTINCT master_id) FROM replicas")
        .await
}

/// A cancel made through master B revokes, within a second, the leases that a worker holds
/// through master A (review M7: the cancel used to reach only B's own sessions, and A's
/// workers went on computing for a job nobody wanted). B's cancel transaction notifies A
/// (LISTEN/NOTIFY), so A does not wait for its next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_master_revokes_the_leases_held_on_another() {
    use common::Peer;
    use grid_protocol::MasterMessage;

    let home = Home::new(Backend::Postgres).await;
    let (_master_a, addr_a) = spawn_server_process(&home, "127.0.0.1:0");
    let (_master_b, addr_b) = spawn_server_process(&home, "127.0.0.1:0");
    let api_b = Api::new(&format!("http://{addr_b}"), ADMIN_TOKEN);
    let inputs: Vec<_> = (0..100).map(|i| json!({"i": i})).collect();
    let job = api_b
        .submit(json!({"kernel": "echo", "inputs": inputs, "redundancy": 1}))
        .await;

    // A peer on A takes leases of the job and sits on them.
    let mut peer = Peer::join(&format!("ws://{addr_a}/ws"), "holder-on-a", 4).await;
    let mut held = std::collections::BTreeSet::new();
    while held.len() < 4 {
        let (lease, _) = peer.next_assignment().await;
        held.insert(lease);
    }

    let cancelled_at = tokio::time::Instant::now();
    let (status, body) = api_b.delete(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(status, 200, "{body}");
    let mut revoked = std::collections::BTreeSet::new();
    while revoked.len() < held.len() {
        match peer.recv().await {
            Some(MasterMessage::Revoke { leases }) => revoked.extend(leases),
            Some(_) => {}
            None => panic!("master A closed the session"),
        }
    }
    let took = cancelled_at.elapsed();
    assert!(
        held.is_subset(&revoked),
        "held {held:?}, revoked {revoked:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "the revocation reached the worker on the other master after {took:?}"
    );
    eprintln!("cross-master revocation after {took:?}");
}

/// Work submitted through master A reaches a worker idling on master B at once: A's insert
/// notifies B (LISTEN/NOTIFY) rather than B finding it at its next one-second sweep. Five
/// jobs one after another: with the sweep alone, the slowest of five waits would pass 400 ms
/// 99 times in 100 (each is uniform over the second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_work_reaches_an_idle_worker_on_another_master_at_once() {
    use common::Peer;

    let home = Home::new(Backend::Postgres).await;
    let (_master_a, addr_a) = spawn_server_process(&home, "127.0.0.1:0");
    let (_master_b, addr_b) = spawn_server_process(&home, "127.0.0.1:0");
    let api_a = Api::new(&format!("http://{addr_a}"), ADMIN_TOKEN);
    let mut peer = Peer::join(&format!("ws://{addr_b}/ws"), "idle-on-b", 1).await;
    // Let B settle into idleness (its first sweep after the welcome).
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut waits = Vec::new();
    for round in 0..5 {
        let submitted = tokio::time::Instant::now();
        let job = api_a
            .submit(json!({"kernel": "echo", "inputs": [{"round": round}], "redundancy": 1}))
            .await;
        let (lease, input) = peer.next_assignment().await;
        waits.push(submitted.elapsed());
        assert_eq!(input, json!({"round": round}));
        peer.send(&grid_protocol::WorkerMessage::Result {
            lease,
            outcome: grid_protocol::Outcome::Ok(json!({"round": round})),
        })
        .await;
        let finished = api_a.wait_finished(job, Duration::from_secs(30)).await;
        assert_eq!(finished["state"], "done", "{finished}");
        // A random phase against B's sweep for the next round.
        tokio::time::sleep(Duration::from_millis(150 + 170 * round)).await;
    }
    waits.sort();
    eprintln!("work submitted on A reached the worker on B after {waits:?}");
    assert!(
        waits[4] < Duration::from_millis(400),
        "submitted through A, assigned through B after {waits:?}"
    );
}
