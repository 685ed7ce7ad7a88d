//! Attacks from the security review (`shared/reviews/security-dccb6b2.md`), mounted over real
//! sockets against a master that trusts no network, with honest peers beside them on networks
//! of their own (each peer binds a 127.x.y.z source address: on loopback every /24 is a
//! network). Each test asserts what a submitter would check: no forged result accepted, no
//! chunk failed by the attacker, every honest result kept, in bounded time.
//!
//! - C1: a Sybil pair connected first from one network, always agreeing on one lie.
//! - C2: release cycling (take every lease, hand it back), and dropping with a fresh identity
//!   per connection.
//! - C3: error outcomes carrying NUL, which PostgreSQL refuses in text.
//! - Sleepers on distinct networks that behave until trusted and then all tell one lie,
//!   against adaptive verification.
//! - M10: a colluding pair that holds both replicas of chunks and answers (correctly) only
//!   after a long delay, to be credited the time it held them.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer, modules};
use futures_util::{SinkExt, StreamExt};
use grid_protocol::{MasterMessage, Outcome, WorkerKind, WorkerMessage};
use grid_server::ServeOptions;
use grid_server::network::NetworkPolicy;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    a_sybil_pair_on_one_network_gets_no_forged_result_accepted,
    release_cycling_and_dropping_fail_no_chunk,
    nul_in_error_outcomes_loses_no_honest_result,
    sleepers_on_distinct_networks_are_caught_and_backtracked,
    an_engine_split_module_blames_nobody,
    backtracking_never_revives_a_cancelled_job,
    a_huge_slot_count_buys_a_hoarder_nothing,
    hoarders_that_hand_work_back_undone_are_benched,
    colluders_cannot_poison_the_spot_checks,
    rotating_liars_are_caught_on_their_first_assignments,
    holding_leases_to_the_deadline_inflates_no_credit,
);

/// How an adversarial or honest peer answers (echo kernel jobs).
#[derive(Clone, Copy)]
enum Behaviour {
    Honest,
    /// Always `{"pwned": true}`: every member of a Sybil group tells the same lie.
    Forge,
    /// Honest for this many results, then forges like [`Behaviour::Forge`].
    Sleeper(u32),
    /// Hands every lease back at once.
    Release,
    /// Answers every lease with an error outcome holding a NUL character.
    NulError,
    /// What an engine with a small call stack says of the engine-splitting module.
    StackExhausted,
}

/// A master that trusts no network: every peer is judged by its /24.
async fn untrusting_master(backend: Backend) -> InProcessServer {
    let options = ServeOptions {
        networks: NetworkPolicy::parse("24,48", "", "").unwrap(),
        ..ServeOptions::default()
    };
    InProcessServer::start_with_options(backend, options).await
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A peer on `source` answering assignments until the connection ends; counts its results.
fn spawn_peer(
    ws: String,
    source: &str,
    id: &str,
    slots: u32,
    behaviour: Behaviour,
    sent: Arc<AtomicU32>,
) -> JoinHandle<()> {
    spawn_peer_as(ws, source, id, slots, behaviour, sent, WorkerKind::Native)
}

fn spawn_peer_as(
    ws: String,
    source: &str,
    id: &str,
    slots: u32,
    behaviour: Behaviour,
    sent: Arc<AtomicU32>,
    kind: WorkerKind,
) -> JoinHandle<()> {
    let source = ip(source);
    let id = id.to_owned();
    tokio::spawn(async move {
        let mut peer = Peer::join_from_as(&ws, source, &id, slots, kind).await;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), peer.socket.next()).await;
            let text = match frame {
                Err(_) => {
                    peer.send(&WorkerMessage::Heartbeat).await;
                    continue;
                }
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return,
                Ok(Some(Ok(_))) => continue,
            };
            let Ok(MasterMessage::Assign { lease, input, .. }) = MasterMessage::from_json(&text)
            else {
                continue;
            };
            let done = sent.load(Ordering::Relaxed);
            let reply = match behaviour {
                Behaviour::Honest => WorkerMessage::Result {
                    lease,
                    outcome: Outcome::Ok(input),
                },
                Behaviour::Sleeper(n) if done < n => WorkerMessage::Result {
                    lease,
                    outcome: Outcome::Ok(input),
                },
                Behaviour::Forge | Behaviour::Sleeper(_) => WorkerMessage::Result {
                    lease,
                    outcome: Outcome::Ok(json!({"pwned": true})),
                },
                Behaviour::Release => WorkerMessage::Release {
                    leases: vec![lease],
                },
                Behaviour::NulError => WorkerMessage::Result {
                    lease,
                    outcome: Outcome::Err("bad\u{0}byte".into()),
                },
                Behaviour::StackExhausted => WorkerMessage::Result {
                    lease,
                    outcome: Outcome::Err("trap: call stack exhausted".into()),
                },
            };
            peer.send(&reply).await;
            sent.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// A peer that answers every assignment correctly but only `delay` after it came (all held
/// leases at once, as a colluder milking credit would).
fn spawn_lazy_peer(
    ws: String,
    source: &str,
    id: &str,
    slots: u32,
    delay: Duration,
) -> JoinHandle<()> {
    let source = ip(source);
    let id = id.to_owned();
    tokio::spawn(async move {
        let peer = Peer::join_from(&ws, source, &id, slots).await;
        let (mut sink, mut stream) = peer.socket.split();
        let (answers, mut due) = tokio::sync::mpsc::unbounded_channel::<WorkerMessage>();
        loop {
            tokio::select! {
                frame = tokio::time::timeout(Duration::from_secs(5), stream.next()) => {
                    let text = match frame {
                        Err(_) => {
                            let beat = grid_protocol::to_json(&WorkerMessage::Heartbeat);
                            let _ = sink.send(Message::Text(beat.into())).await;
                            continue;
                        }
                        Ok(Some(Ok(Message::Text(text)))) => text,
                        Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return,
                        Ok(Some(Ok(_))) => continue,
                    };
                    if let Ok(MasterMessage::Assign { lease, input, .. }) =
                        MasterMessage::from_json(&text)
                    {
                        let answers = answers.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = answers.send(WorkerMessage::Result {
                                lease,
                                outcome: Outcome::Ok(input),
                            });
                        });
                    }
                }
                Some(answer) = due.recv() => {
                    let text = grid_protocol::to_json(&answer);
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// A peer that connects from `source` with a fresh identity each time, takes `hold`
/// assignments, and drops the connection holding them; again and again.
fn spawn_rotating_dropper(ws: String, source: &str, hold: usize) -> JoinHandle<()> {
    let source = ip(source);
    tokio::spawn(async move {
        for round in 0u32.. {
            let id = format!("rotor-{round}-{}", rand_suffix());
            let mut peer = Peer::join_from(&ws, source, &id, 64).await;
            let mut held = 0;
            while held < hold {
                let frame = tokio::time::timeout(Duration::from_secs(2), peer.socket.next()).await;
                match frame {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        if let Ok(MasterMessage::Assign { .. }) = MasterMessage::from_json(&text) {
                            held += 1;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Err(_) => break,
                    Ok(Some(Err(_)) | None) => break,
                }
            }
            drop(peer);
        }
    })
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    u64::from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    )
}

fn inputs(n: usize, tag: &str) -> Vec<Value> {
    (0..n).map(|i| json!({"tag": tag, "i": i})).collect()
}

/// Every chunk present once with exactly its input as output; returns how many were forged.
fn forged_and_check(results: &[Value], expected: &[Value]) -> usize {
    assert_eq!(results.len(), expected.len(), "every chunk has a result");
    let mut forged = 0;
    for (line, input) in results.iter().zip(expected) {
        if &line["output"] != input {
            forged += 1;
        }
    }
    forged
}

/// Wait for a job to finish; on timeout, panic with what is stuck.
async fn finish_or_explain(
    server: &InProcessServer,
    api: &Api,
    job: i64,
    within: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (_, view) = api.get(&format!("/api/v1/jobs/{job}")).await;
        if matches!(
            view["state"].as_str(),
            Some("done" | "failed" | "cancelled")
        ) {
            return view;
        }
        if tokio::time::Instant::now() > deadline {
            let open = server
                .store
                .text(&format!(
                    "SELECT COALESCE(string_agg(c.idx || ' ' || c.state || ' wanted=' || c.wanted
                       || ' [' || COALESCE((SELECT string_agg(r.worker_id || '/' || r.state || '/'
                       || COALESCE(r.verdict, '-') || '/' || COALESCE(r.origin, '-'), ', ')
                       FROM replicas r WHERE r.job_id = c.job_id AND r.chunk_idx = c.idx), '')
                       || ']', ' | '), 'none')
                     FROM chunks c WHERE c.job_id = {job} AND c.state = 'open'"
                ))
                .await;
            let workers = server
                .store
                .text(
                    "SELECT string_agg(id || ' blacklisted=' || (blacklisted_at IS NOT NULL)
                       || ' invalid=' || invalid_count, ', ') FROM workers",
                )
                .await;
            panic!("job {job} did not finish: {view}\nopen chunks: {open}\nworkers: {workers}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn blacklisted_ids(server: &InProcessServer, like: &str) -> i64 {
    server
        .store
        .count(&format!(
            "SELECT count(*) FROM workers WHERE id LIKE '{like}' AND blacklisted_at IS NOT NULL"
        ))
        .await
}

fn honest_peers(server: &InProcessServer, networks: &[&str], slots: u32) -> Vec<JoinHandle<()>> {
    networks
        .iter()
        .enumerate()
        .map(|(i, source)| {
            spawn_peer(
                server.ws(),
                source,
                &format!("honest-{i}"),
                slots,
                Behaviour::Honest,
                Arc::new(AtomicU32::new(0)),
            )
        })
        .collect()
}

/// C1: the review's reproduction accepted 1,000 of 1,000 forged results. Here the pair
/// connects first with many slots; honest workers join after it on three other networks.
async fn a_sybil_pair_on_one_network_gets_no_forged_result_accepted(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let lies = Arc::new(AtomicU32::new(0));
    let mut peers: Vec<JoinHandle<()>> = ["sybil-a", "sybil-b"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            spawn_peer(
                server.ws(),
                &format!("127.0.9.{}", i + 1),
                id,
                256,
                Behaviour::Forge,
                lies.clone(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    peers.extend(honest_peers(
        &server,
        &["127.0.1.1", "127.0.2.1", "127.0.3.1"],
        4,
    ));
    let expected = inputs(400, "sybil");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert!(lies.load(Ordering::Relaxed) > 0, "the Sybils never lied");
    assert_eq!(
        forged_and_check(&api.results(job).await, &expected),
        0,
        "forged results were accepted"
    );
    // The pair disagreed with honest workers on other networks: caught, and nobody honest.
    assert_eq!(blacklisted_ids(&server, "sybil-%").await, 2);
    assert_eq!(blacklisted_ids(&server, "honest-%").await, 0);
    // Only the admin lifts a blacklist, and only of an identity that exists.
    let (_, token) = api.post("/api/v1/tokens", &json!({})).await;
    let submitter = Api::new(&server.http(), token["token"].as_str().unwrap());
    let (status, body) = submitter.delete("/api/v1/workers/sybil-a/blacklist").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = api.delete("/api/v1/workers/nobody/blacklist").await;
    assert_eq!(status, 404);
    let (status, body) = api.delete("/api/v1/workers/sybil-a/blacklist").await;
    assert_eq!(
        (status, &body["blacklisted"]),
        (200, &json!(false)),
        "{body}"
    );
    assert_eq!(blacklisted_ids(&server, "sybil-%").await, 1);
    // No quorum ever held two replicas from one network.
    assert_eq!(
        server
            .store
            .count(
                "SELECT count(*) FROM (SELECT job_id, chunk_idx, origin FROM replicas
                 WHERE origin IS NOT NULL AND state <> 'revoked'
                 GROUP BY job_id, chunk_idx, origin HAVING count(*) > 1) AS doubled"
            )
            .await,
        0
    );
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}

/// C2: one session releasing every lease failed 1,067 of 1,500 chunks in the review. Here a
/// releaser (two identities on one network) and a dropper that takes leases and disconnects
/// with a fresh identity every time run beside three honest workers.
async fn release_cycling_and_dropping_fail_no_chunk(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let released = Arc::new(AtomicU32::new(0));
    let mut peers: Vec<JoinHandle<()>> = ["releaser-a", "releaser-b"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            spawn_peer(
                server.ws(),
                &format!("127.0.9.{}", i + 1),
                id,
                256,
                Behaviour::Release,
                released.clone(),
            )
        })
        .collect();
    peers.push(spawn_rotating_dropper(server.ws(), "127.0.8.1", 64));
    tokio::time::sleep(Duration::from_millis(300)).await;
    peers.extend(honest_peers(
        &server,
        &["127.0.1.1", "127.0.2.1", "127.0.3.1"],
        4,
    ));
    let expected = inputs(1500, "release");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert!(released.load(Ordering::Relaxed) > 0, "nothing was released");
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(finished["chunks"]["failed"], 0, "{finished}");
    assert_eq!(forged_and_check(&api.results(job).await, &expected), 0);
    // One network ended at most one lease of each chunk, whatever its identities did.
    assert_eq!(
        server
            .store
            .count(
                "SELECT count(*) FROM (SELECT job_id, chunk_idx, origin FROM replicas
                 WHERE origin IS NOT NULL AND state IN ('released', 'expired')
                 GROUP BY job_id, chunk_idx, origin HAVING count(*) > 1) AS repeated"
            )
            .await,
        0
    );
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}

/// C3: an error outcome with NUL made PostgreSQL refuse the group commit and the master drop
/// the honest results beside it. Here the poisoner answers every lease so; the job completes
/// with the right answers and the poisoner's texts are stored escaped.
async fn nul_in_error_outcomes_loses_no_honest_result(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let poisoned = Arc::new(AtomicU32::new(0));
    let mut peers = vec![spawn_peer(
        server.ws(),
        "127.0.9.1",
        "poisoner",
        64,
        Behaviour::NulError,
        poisoned.clone(),
    )];
    peers.extend(honest_peers(
        &server,
        &["127.0.1.1", "127.0.2.1", "127.0.3.1"],
        4,
    ));
    let expected = inputs(1000, "nul");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert!(
        poisoned.load(Ordering::Relaxed) > 0,
        "the poisoner never answered"
    );
    assert_eq!(forged_and_check(&api.results(job).await, &expected), 0);
    // Its results were recorded (and outvoted), not refused: stored without the NUL.
    let stored = server
        .store
        .count("SELECT count(*) FROM replicas WHERE worker_id = 'poisoner' AND state = 'returned'")
        .await;
    assert!(stored > 0, "the poisoner's results were not recorded");
    assert_eq!(
        server
            .store
            .count(
                "SELECT count(*) FROM replicas WHERE worker_id = 'poisoner'
                 AND outcome IS NOT NULL AND outcome <> 'bad\\u{0000}byte'"
            )
            .await,
        0,
        "error texts are stored with the NUL escaped"
    );
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}

/// Sleepers on two networks of their own (a quarter of the slots) behave until trusted, then
/// all tell one lie, against adaptive verification: the master's own checks and spot-checks
/// catch them, backtracking re-verifies what their word accepted, and the results are right.
async fn sleepers_on_distinct_networks_are_caught_and_backtracked(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let mut peers = honest_peers(
        &server,
        &[
            "127.0.1.1",
            "127.0.2.1",
            "127.0.3.1",
            "127.0.4.1",
            "127.0.5.1",
            "127.0.6.1",
        ],
        1,
    );
    // A warm-up job gives the master answers of its own to spot-check with.
    let warm = inputs(40, "warm-up");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": warm, "redundancy": 2}))
        .await;
    assert_eq!(
        api.wait_finished(job, Duration::from_secs(60)).await["state"],
        "done"
    );
    for (i, id) in ["sleeper-a", "sleeper-b"].iter().enumerate() {
        peers.push(spawn_peer(
            server.ws(),
            &format!("127.0.{}.1", 20 + i),
            id,
            1,
            Behaviour::Sleeper(30),
            Arc::new(AtomicU32::new(0)),
        ));
    }
    let expected = inputs(600, "adaptive");
    let job = api
        .submit(
            json!({"kernel": "echo", "inputs": expected, "redundancy": 2,
                       "verification": "adaptive"}),
        )
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    // Backtracking may still be re-verifying the last lies: wait until the job is done again
    // with no lie left, or fail.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let finished = api.wait_finished(job, Duration::from_secs(60)).await;
        let forged = forged_and_check(&api.results(job).await, &expected);
        if forged == 0 && finished["state"] == "done" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{forged} forged results still accepted: {finished}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(blacklisted_ids(&server, "honest-%").await, 0);
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}

/// H2: a tenant's module whose outcome depends on the engine (call-stack depth) used to get
/// every volunteer of the minority engine blacklisted, with backtracking across tenants. Here
/// native peers return the output and browser peers the stack-overflow trap on every chunk:
/// nobody is blamed, and where both engines speak with several voices the chunk fails as
/// engine-dependent.
async fn an_engine_split_module_blames_nobody(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let module = api.upload_module(modules::echo()).await;
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(spawn_peer_as(
            server.ws(),
            &format!("127.0.{}.1", 30 + i),
            &format!("native-{i}"),
            2,
            Behaviour::Honest,
            Arc::new(AtomicU32::new(0)),
            WorkerKind::Native,
        ));
        peers.push(spawn_peer_as(
            server.ws(),
            &format!("127.0.{}.1", 40 + i),
            &format!("browser-{i}"),
            2,
            Behaviour::StackExhausted,
            Arc::new(AtomicU32::new(0)),
            WorkerKind::Browser,
        ));
    }
    let expected = inputs(30, "split");
    let job = api
        .submit(json!({"module": module, "inputs": expected, "redundancy": 3}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    let results = api.results(job).await;
    assert_eq!(results.len(), 30, "{finished}");
    let engine_dependent = results
        .iter()
        .filter(|line| {
            line["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("engine-dependent"))
        })
        .count();
    assert!(
        engine_dependent > 0,
        "no chunk was found engine-dependent: {results:?}"
    );
    assert_eq!(
        blacklisted_ids(&server, "%").await,
        0,
        "someone was blacklisted"
    );
    assert_eq!(
        server
            .store
            .count("SELECT count(*) FROM workers WHERE invalid_count > 0")
            .await,
        0,
        "a worker was blamed for its engine"
    );
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}

/// M9: backtracking used to reopen chunks of cancelled jobs, so volunteers computed for a job
/// nobody wanted. A sleeper helps accept chunks of a job that is then cancelled, and is caught
/// lying in the next job: the cancelled job stays cancelled with nothing reopened.
async fn backtracking_never_revives_a_cancelled_job(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let mut peers = honest_peers(&server, &["127.0.1.1", "127.0.2.1", "127.0.3.1"], 1);
    peers.push(spawn_peer(
        server.ws(),
        "127.0.50.1",
        "sleeper",
        2,
        Behaviour::Sleeper(60),
        Arc::new(AtomicU32::new(0)),
    ));
    let first = api
        .submit(json!({"kernel": "echo", "inputs": inputs(3000, "cancelled"), "redundancy": 2}))
        .await;
    api.wait_progress(first, 40).await;
    let (status, _) = api.delete(&format!("/api/v1/jobs/{first}")).await;
    assert_eq!(status, 200);
    let helped = server
        .store
        .count(&format!(
            "SELECT count(*) FROM replicas WHERE job_id = {first} AND worker_id = 'sleeper'
             AND verdict = 'valid'"
        ))
        .await;
    let second = api
        .submit(json!({"kernel": "echo", "inputs": inputs(400, "after"), "redundancy": 2}))
        .await;
    let finished = api.wait_finished(second, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while blacklisted_ids(&server, "sleeper").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sleeper was not caught"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, job) = api.get(&format!("/api/v1/jobs/{first}")).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(
        server
            .store
            .count(&format!(
                "SELECT count(*) FROM chunks WHERE job_id = {first} AND state = 'open'"
            ))
            .await,
        0,
        "a chunk of the cancelled job was reopened (the sleeper helped accept {helped})"
    );
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}

/// A session declaring the protocol's largest slot count from an untrusted network and sitting
/// on every lease: it starts with 8 outstanding assignments, earns no more without results,
/// and the honest workers finish the job.
async fn a_huge_slot_count_buys_a_hoarder_nothing(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let most_held = Arc::new(AtomicU32::new(0));
    let hoarder = tokio::spawn({
        let ws = server.ws();
        let tracker = most_held.clone();
        async move {
            let mut peer =
                Peer::join_from(&ws, ip("127.0.9.1"), "hoarder", grid_protocol::MAX_SLOTS).await;
            // Outstanding leases (assigned, not yet revoked), and the most ever held at once.
            let (mut held, mut most) = (0usize, 0usize);
            while let Ok(Some(Ok(frame))) =
                tokio::time::timeout(Duration::from_secs(30), peer.socket.next()).await
            {
                let Message::Text(text) = frame else { continue };
                match MasterMessage::from_json(&text) {
                    Ok(MasterMessage::Assign { .. }) => held += 1,
                    Ok(MasterMessage::Revoke { leases }) => {
                        held = held.saturating_sub(leases.len())
                    }
                    _ => {}
                }
                most = most.max(held);
                tracker.store(most as u32, Ordering::Relaxed);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peers = honest_peers(&server, &["127.0.1.1", "127.0.2.1", "127.0.3.1"], 2);
    let expected = inputs(300, "hoard");
    // Short leases: what the hoarder sits on comes back after 5 s (to others: it never gets a
    // chunk twice).
    let job = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2, "lease_seconds": 5}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(forged_and_check(&api.results(job).await, &expected), 0);
    let most = most_held.load(Ordering::Relaxed);
    assert!(
        (1..=8).contains(&most),
        "the hoarder held {most} leases at once (8 expected at most)"
    );
    server.stop().await;
    hoarder.abort();
    peers.iter().for_each(JoinHandle::abort);
}

/// Review H5 (measured by `bench/adversaries.sh`'s `hungry`: 16 % of the honest rate): 16
/// sessions on networks of their own take every lease they can and hand it back undone every
/// second, so the chunks they touch bounce between them and never reach the honest workers
/// at the end of a job. Each hand-back without a result benches the origin (15 s, then twice
/// as long each time): the honest workers finish the job, and the hoarders get a few
/// assignments each, not one a second.
async fn hoarders_that_hand_work_back_undone_are_benched(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    // Assignments to hoarders after their first hand-back.
    let assigned = Arc::new(AtomicU32::new(0));
    let hoarders: Vec<JoinHandle<()>> = (0..16)
        .map(|i| {
            let ws = server.ws();
            let counter = assigned.clone();
            tokio::spawn(async move {
                let mut peer = Peer::join_from(
                    &ws,
                    ip(&format!("127.0.{}.1", 100 + i)),
                    &format!("hoarder-{i}"),
                    64,
                )
                .await;
                let mut held = Vec::new();
                let mut released = false;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        frame = peer.socket.next() => {
                            let Some(Ok(Message::Text(text))) = frame else { return };
                            if let Ok(MasterMessage::Assign { lease, .. }) =
                                MasterMessage::from_json(&text)
                            {
                                if released {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                }
                                held.push(lease);
                            }
                        }
                        _ = tick.tick() => {
                            if !held.is_empty() {
                                let leases = std::mem::take(&mut held);
                                peer.send(&WorkerMessage::Release { leases }).await;
                                released = true;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = inputs(400, "bench");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2}))
        .await;
    // The hoarders connected first: they take their first 8 each before anyone else.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peers = honest_peers(&server, &["127.0.1.1", "127.0.2.1", "127.0.3.1"], 2);
    let finished = api.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(forged_and_check(&api.results(job).await, &expected), 0);
    // Benched 15 s after their first hand-back (then 30 s): one more each at most while the
    // job runs. Without the bench a hoarder with one credit took a chunk every second.
    let after = assigned.load(Ordering::Relaxed);
    assert!(
        after <= 16 * 2,
        "the hoarders were assigned {after} leases after handing work back (2 each at most)"
    );
    server.stop().await;
    hoarders.iter().for_each(JoinHandle::abort);
    peers.iter().for_each(JoinHandle::abort);
}

/// Review H1: chunks won by colluders used to become spot-checks that honest newcomers then
/// "failed", getting them blacklisted. Colluders on two networks of their own (a quarter of the
/// slots) win what they can; a fresh honest worker joining afterwards is never blamed, because
/// a spot-check's answer is one the master computed itself.
async fn colluders_cannot_poison_the_spot_checks(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let mut peers: Vec<JoinHandle<()>> = (0..2)
        .map(|i| {
            spawn_peer(
                server.ws(),
                &format!("127.0.{}.1", 60 + i),
                &format!("colluder-{i}"),
                1,
                Behaviour::Forge,
                Arc::new(AtomicU32::new(0)),
            )
        })
        .collect();
    peers.extend(honest_peers(
        &server,
        &["127.0.1.1", "127.0.3.1", "127.0.4.1"],
        2,
    ));
    let job = api
        .submit(json!({"kernel": "echo", "inputs": inputs(200, "poison"), "redundancy": 2}))
        .await;
    let finished = finish_or_explain(&server, &api, job, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    // Fresh honest identities join and get spot-checks first.
    peers.push(spawn_peer(
        server.ws(),
        "127.0.2.1",
        "newcomer",
        2,
        Behaviour::Honest,
        Arc::new(AtomicU32::new(0)),
    ));
    let expected = inputs(200, "after-poison");
    let second = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2}))
        .await;
    finish_or_explain(&server, &api, second, Duration::from_secs(60)).await;
    // Read the verdict once the master has checked every accepted chunk (its refutations
    // withdraw the blame colluders laid on honest workers before they were caught).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server
        .store
        .count("SELECT count(*) FROM chunks WHERE state = 'open' OR (state = 'done' AND master_checked IS NULL)")
        .await
        > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished = finish_or_explain(&server, &api, second, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(blacklisted_ids(&server, "newcomer").await, 0);
    assert_eq!(blacklisted_ids(&server, "honest-%").await, 0);
    // Every spot-check's chunk is one whose output the master computed and found right.
    assert_eq!(
        server
            .store
            .count(
                "SELECT count(*) FROM replicas r JOIN chunks c
                   ON c.job_id = r.job_id AND c.idx = r.chunk_idx
                 WHERE r.ringer AND (c.master_checked IS NULL OR c.master_checked <> 'agreed')"
            )
            .await,
        0
    );
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}

/// Liars with a fresh identity per connection, on one network, each telling the same lie: once
/// the master has answers of its own, a new identity's first assignments are spot-checks, so
/// each one is caught before its word counts and the job's results are right.
async fn rotating_liars_are_caught_on_their_first_assignments(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let mut peers = honest_peers(&server, &["127.0.1.1", "127.0.2.1", "127.0.3.1"], 2);
    let warm = api
        .submit(json!({"kernel": "echo", "inputs": inputs(60, "warm-up"), "redundancy": 2}))
        .await;
    api.wait_finished(warm, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    peers.push(tokio::spawn({
        let ws = server.ws();
        async move {
            for round in 0u32.. {
                let id = format!("rotor-{round}-{}", rand_suffix());
                let mut peer = Peer::join_from(&ws, ip("127.0.9.1"), &id, 4).await;
                for _ in 0..4 {
                    match peer.recv().await {
                        Some(MasterMessage::Assign { lease, .. }) => {
                            peer.send(&WorkerMessage::Result {
                                lease,
                                outcome: Outcome::Ok(json!({"pwned": true})),
                            })
                            .await;
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
        }
    }));
    let expected = inputs(300, "rotation");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(forged_and_check(&api.results(job).await, &expected), 0);
    assert!(
        blacklisted_ids(&server, "rotor-%").await > 0,
        "no rotating liar was caught"
    );
    assert_eq!(blacklisted_ids(&server, "honest-%").await, 0);
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}

/// M10: credit was the shortest lease-to-result time among a chunk's valid replicas, so a pair
/// holding both replicas and answering late was credited the whole hold. Here the pair
/// connects first and takes the first chunks of a job together (it is all there is), holds
/// them 3 s and answers correctly; honest workers join and compute the rest in milliseconds.
/// Each chunk's credit is capped at a few times the job's median chunk time.
async fn holding_leases_to_the_deadline_inflates_no_credit(backend: Backend) {
    let server = untrusting_master(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let hold = Duration::from_secs(3);
    let mut peers = vec![
        spawn_lazy_peer(server.ws(), "127.0.9.1", "lazy-a", 8, hold),
        spawn_lazy_peer(server.ws(), "127.0.10.1", "lazy-b", 8, hold),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = inputs(300, "lazy");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2}))
        .await;
    // The pair holds its first leases before anyone honest is there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    peers.extend(honest_peers(
        &server,
        &["127.0.1.1", "127.0.2.1", "127.0.3.1"],
        4,
    ));
    let finished = finish_or_explain(&server, &api, job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(forged_and_check(&api.results(job).await, &expected), 0);
    // Chunks both replicas of which the pair held: the attack happened.
    let held = server
        .store
        .count(&format!(
            "SELECT count(*) FROM (SELECT chunk_idx FROM replicas
             WHERE job_id = {job} AND verdict = 'valid' AND worker_id LIKE 'lazy-%'
             GROUP BY chunk_idx HAVING count(*) = 2) AS both_lazy"
        ))
        .await;
    assert!(held > 0, "the pair never held both replicas of a chunk");
    let credits = server.store.shared().credits().await.unwrap();
    let per_result = |prefix: &str| {
        let (ms, results) = credits
            .iter()
            .filter(|c| c.worker_id.starts_with(prefix))
            .fold((0.0, 0), |(ms, n), c| (ms + c.credit_ms, n + c.results));
        assert!(results > 0, "no valid result from {prefix}*");
        ms / results as f64
    };
    let honest = per_result("honest-");
    for id in ["lazy-a", "lazy-b"] {
        let lazy = per_result(id);
        // Uncapped, every held chunk would earn the 3,000 ms it was held. Capped, a chunk earns
        // at most 4x the job's median chunk time, and the median is at most the mean.
        assert!(
            lazy < 1_500.0 && lazy <= 4.0 * honest * 1.05,
            "{id} held {held} chunks for 3 s: credited {lazy:.0} ms per result, honest workers {honest:.0} ms"
        );
    }
    server.stop().await;
    peers.iter().for_each(JoinHandle::abort);
}
