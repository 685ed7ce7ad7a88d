//! Scale-out: several masters share one PostgreSQL (claims and leases live in the database),
//! workers fail over between them, and losing a master loses no chunk.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    ADMIN_TOKEN, Api, Backend, Home, primes_inputs, primes_reference, spawn_server_process,
    spawn_worker, spawn_workers_across,
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
    let _workers = spawn_workers_across([&ws_a, &ws_b], 4, identities.path());

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

/// Live workers on the master at `base` (`grid_workers_connected`, every kind).
async fn workers_connected(base: &str) -> f64 {
    common::metric_sum(base, "grid_workers_connected{").await
}

/// Workers given one master's URL follow the others when it dies: the masters name each other
/// (`GET /api/v1/masters`, the welcome), one worker learns of B from its welcome, the other,
/// connected before B started, from asking its master again; A is killed and both carry on
/// through B, with no one touching them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_given_one_master_follow_the_others_when_it_dies() {
    let home = Home::new(Backend::Postgres).await;
    let (mut master_a, addr_a) = spawn_server_process(&home, "127.0.0.1:0");
    let ws_a = format!("ws://{addr_a}/ws");
    let identities = tempfile::tempdir().unwrap();
    // Connected while A is the only master: it learns of B only by asking A again (every
    // 2 s here, 120 s by default).
    let _early = common::spawn_worker_with(
        &[&ws_a],
        1,
        &identities.path().join("early.id"),
        &["--masters-refresh-secs", "2"],
    );

    let (_master_b, addr_b) = spawn_server_process(&home, "127.0.0.1:0");
    let ws_b = format!("ws://{addr_b}/ws");
    let api_a = Api::new(&format!("http://{addr_a}"), ADMIN_TOKEN);
    let api_b = Api::new(&format!("http://{addr_b}"), ADMIN_TOKEN);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = api_a.get("/api/v1/masters").await;
        assert_eq!(status, 200, "{body}");
        if body["masters"] == json!([ws_a, ws_b]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never named B: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = api_b.get("/api/v1/masters").await;
    assert_eq!(body["masters"], json!([ws_b, ws_a]), "B names itself first");
    // Welcomed by A once A knows B.
    let _late = spawn_worker(&ws_a, 1, &identities.path().join("late.id"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while workers_connected(&format!("http://{addr_a}")).await < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workers never joined A"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The early worker asks A for the live masters every 1.5–2.5 s.
    tokio::time::sleep(Duration::from_secs(4)).await;

    master_a.kill();
    let killed = tokio::time::Instant::now();
    let deadline = killed + Duration::from_secs(60);
    while workers_connected(&format!("http://{addr_b}")).await < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workers did not fail over to B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "both workers on B {:?} after A was killed",
        killed.elapsed()
    );

    let inputs = primes_inputs(1_000_000, 3_000_000, 20);
    let job = api_b
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    let finished = api_b.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api_b.results(job).await;
    assert_eq!(
        common::primes_total(&results, 20, Some(2)),
        primes_reference(&inputs)
    );
}

/// A master that drains (SIGTERM) withdraws itself from the others' lists and hands its
/// workers to them: a worker given only its URL finishes the job through the other master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_master_hands_its_workers_to_the_others() {
    let home = Home::new(Backend::Postgres).await;
    let (mut master_a, addr_a) = spawn_server_process(&home, "127.0.0.1:0");
    let (_master_b, addr_b) = spawn_server_process(&home, "127.0.0.1:0");
    let (ws_a, ws_b) = (format!("ws://{addr_a}/ws"), format!("ws://{addr_b}/ws"));
    let api_a = Api::new(&format!("http://{addr_a}"), ADMIN_TOKEN);
    let api_b = Api::new(&format!("http://{addr_b}"), ADMIN_TOKEN);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api_a.get("/api/v1/masters").await.1["masters"] != json!([ws_a, ws_b]) {
        assert!(tokio::time::Instant::now() < deadline, "A never named B");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let identities = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&ws_a, 1, &identities.path().join("w1.id"));
    let _w2 = spawn_worker(&ws_a, 1, &identities.path().join("w2.id"));
    // About 25 s of work for the two workers, so it outlasts the drain.
    const CHUNKS: u64 = 400;
    let inputs = primes_inputs(
        500_000_000_000,
        500_000_000_000 + CHUNKS * 40_000_000,
        CHUNKS,
    );
    let job = api_b
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    api_b.wait_progress(job, 5).await;

    let status = tokio::task::spawn_blocking(move || master_a.terminate())
        .await
        .unwrap()
        .expect("A did not exit within 10 s of SIGTERM");
    assert!(status.success(), "a drain exits 0, got {status}");
    assert!(
        api_b.done_chunks(job).await < CHUNKS as i64,
        "the job ended before the drain"
    );
    // B stops naming A (withdrawn at the start of the drain, not 10 s after its death).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while api_b.get("/api/v1/masters").await.1["masters"] != json!([ws_b]) {
        assert!(tokio::time::Instant::now() < deadline, "B still names A");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let finished = api_b.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api_b.results(job).await;
    assert_eq!(
        common::primes_total(&results, CHUNKS, None),
        primes_reference(&inputs)
    );
}
