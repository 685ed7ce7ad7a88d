//! Trust: spot-check ringers catch liars, colluders cannot get a wrong result accepted under
//! the adaptive policy, a sleeper caught later triggers backtracking and the final results are
//! right, and a blacklisted identity gets no more work.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer};
use futures_util::StreamExt;
use grid_protocol::{MasterMessage, Outcome, WorkerMessage};
use grid_server::ServeOptions;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    colluders_are_caught_and_cannot_get_a_wrong_result_accepted,
    a_sleeper_caught_later_is_backtracked_and_results_are_right,
    plain_voting_has_no_spot_checks_and_blacklists_nobody,
);

/// How a test peer answers.
#[derive(Clone, Copy)]
enum Behaviour {
    Honest,
    /// Always the same wrong output (colluders agree with each other).
    Colluding,
    /// Honest for this many results, then colluding.
    Sleeper(u32),
}

/// A peer answering every assignment (echo kernel) until the connection ends; returns how
/// many results it sent.
fn spawn_peer(ws: String, id: &'static str, slots: u32, behaviour: Behaviour) -> JoinHandle<u32> {
    tokio::spawn(async move {
        let mut peer = Peer::join(&ws, id, slots).await;
        let mut sent = 0u32;
        loop {
            // Idle peers keep their session alive with heartbeats, like real workers.
            let frame = tokio::time::timeout(Duration::from_secs(5), peer.socket.next()).await;
            let text = match frame {
                Err(_) => {
                    peer.send(&WorkerMessage::Heartbeat).await;
                    continue;
                }
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return sent,
                Ok(Some(Ok(_))) => continue,
            };
            let Ok(message) = MasterMessage::from_json(&text) else {
                return sent;
            };
            if let MasterMessage::Assign { lease, input, .. } = message {
                let honest = match behaviour {
                    Behaviour::Honest => true,
                    Behaviour::Colluding => false,
                    Behaviour::Sleeper(n) => sent < n,
                };
                let output = if honest {
                    input
                } else {
                    json!({"forged": true})
                };
                peer.send(&WorkerMessage::Result {
                    lease,
                    outcome: Outcome::Ok(output),
                })
                .await;
                sent += 1;
            }
        }
    })
}

fn inputs(n: usize, tag: &str) -> Vec<Value> {
    (0..n).map(|i| json!({"tag": tag, "i": i})).collect()
}

/// Every chunk present once, with exactly its input as output (the echo kernel).
fn assert_right(results: &[Value], expected: &[Value]) {
    assert_eq!(results.len(), expected.len(), "every chunk has a result");
    for (line, input) in results.iter().zip(expected) {
        assert_eq!(&line["output"], input, "wrong result accepted: {line}");
    }
}

async fn blacklisted(server: &InProcessServer, id: &str) -> bool {
    server
        .store
        .count(&format!(
            "SELECT count(*) FROM workers WHERE id = '{id}' AND blacklisted_at IS NOT NULL"
        ))
        .await
        == 1
}

/// An honest warm-up job so there are accepted answers to use as spot-checks (with trust on,
/// once the master has computed them itself).
async fn warm_up(server: &InProcessServer, api: &Api, trust: bool) {
    // At redundancy 1, so each chunk is computed by one of the honest workers and can be a
    // spot-check for the others (nobody is sent a chunk it computed itself).
    let job = api
        .submit(json!({"kernel": "echo", "inputs": inputs(60, "warm-up"), "redundancy": 1}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done");
    if !trust {
        return;
    }
    // Spot-checks are chunks whose output the master computed itself: wait until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server
        .store
        .count(&format!(
            "SELECT count(*) FROM chunks WHERE job_id = {job} AND master_checked = 'agreed'"
        ))
        .await
        < 60
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the master did not check the warm-up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then the honest workers earn their trust on those spot-checks (their first assignments
    // are ringers), so the job under test starts from a grid that has run before, however
    // slowly this machine runs today.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while server
        .store
        .count(
            "SELECT count(*) FROM workers
             WHERE id LIKE 'honest%' AND consecutive_valid < 10 AND blacklisted_at IS NULL",
        )
        .await
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the honest workers did not earn trust on the spot-checks"
        );
        round += 1;
        let job = api
            .submit(
                json!({"kernel": "echo", "inputs": inputs(20, &format!("trust-{round}")),
                           "redundancy": 1}),
            )
            .await;
        api.wait_finished(job, Duration::from_secs(60)).await;
    }
}

async fn colluders_are_caught_and_cannot_get_a_wrong_result_accepted(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let honest: Vec<_> = ["honest-1", "honest-2", "honest-3"]
        .into_iter()
        .map(|id| spawn_peer(server.ws(), id, 2, Behaviour::Honest))
        .collect();
    warm_up(&server, &api, true).await;

    // A colluding pair joins: their first assignments are known answers, so they are caught
    // before their word counts for anything.
    let colluders: Vec<_> = ["colluder-1", "colluder-2"]
        .into_iter()
        .map(|id| spawn_peer(server.ws(), id, 2, Behaviour::Colluding))
        .collect();
    let expected = inputs(60, "adaptive");
    let job = api
        .submit(
            json!({"kernel": "echo", "inputs": expected, "redundancy": 2,
                       "verification": "adaptive"}),
        )
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_right(&api.results(job).await, &expected);
    for id in ["colluder-1", "colluder-2"] {
        assert!(blacklisted(&server, id).await, "{id} was not caught");
    }
    // A blacklisted identity gets no more work: another job runs to completion without it.
    let before = server
        .store
        .count("SELECT count(*) FROM replicas WHERE worker_id LIKE 'colluder-%'")
        .await;
    let more = inputs(20, "after");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": more, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done");
    assert_right(&api.results(job).await, &more);
    let after = server
        .store
        .count("SELECT count(*) FROM replicas WHERE worker_id LIKE 'colluder-%'")
        .await;
    assert_eq!(before, after, "a blacklisted identity got work");
    server.stop().await;
    for task in honest.into_iter().chain(colluders) {
        task.abort();
    }
}

async fn a_sleeper_caught_later_is_backtracked_and_results_are_right(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let honest: Vec<_> = ["honest-a", "honest-b"]
        .into_iter()
        .map(|id| spawn_peer(server.ws(), id, 1, Behaviour::Honest))
        .collect();
    warm_up(&server, &api, true).await;
    // The sleeper is honest long enough to be trusted (4 spot-checks + 10 validated results
    // and more), then lies on everything.
    let sleeper = spawn_peer(server.ws(), "sleeper", 1, Behaviour::Sleeper(40));
    let expected = inputs(300, "long");
    let job = api
        .submit(
            json!({"kernel": "echo", "inputs": expected, "redundancy": 2,
                       "verification": "adaptive"}),
        )
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert!(
        blacklisted(&server, "sleeper").await,
        "the sleeper was not caught"
    );
    // Everything its word helped accept was verified again: the final results are right.
    assert_right(&api.results(job).await, &expected);
    let (_, body) = api.get(&format!("/api/v1/jobs/{job}")).await;
    assert!(
        body["chunks"]["revised"].as_i64().unwrap() > 0,
        "the job says its results were revised: {body}"
    );
    // Adaptive verification did less than plain 2-voting would.
    let issued = body["replicas"]["issued"].as_f64().unwrap();
    assert!(
        issued < 2.0 * 300.0,
        "adaptive issued {issued} replicas for 300 chunks"
    );
    server.stop().await;
    for task in honest.into_iter().chain([sleeper]) {
        task.abort();
    }
}

async fn plain_voting_has_no_spot_checks_and_blacklists_nobody(backend: Backend) {
    let options = ServeOptions {
        no_trust: true,
        ..ServeOptions::default()
    };
    let server = InProcessServer::start_with_options(backend, options).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let peers: Vec<_> = [
        ("honest-x", Behaviour::Honest),
        ("honest-y", Behaviour::Honest),
        ("liar-z", Behaviour::Colluding),
    ]
    .into_iter()
    .map(|(id, behaviour)| spawn_peer(server.ws(), id, 2, behaviour))
    .collect();
    warm_up(&server, &api, false).await;
    let expected = inputs(40, "plain");
    let job = api
        .submit(json!({"kernel": "echo", "inputs": expected, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    // With one liar among three, two honest votes always outvote it: right results, the liar's
    // results counted invalid — but no ringers were sent and nobody is blacklisted.
    assert_right(&api.results(job).await, &expected);
    assert!(
        finished["replicas"]["invalid"].as_i64().unwrap() > 0,
        "{finished}"
    );
    assert_eq!(
        server
            .store
            .count("SELECT count(*) FROM replicas WHERE ringer")
            .await,
        0
    );
    assert!(!blacklisted(&server, "liar-z").await);
    server.stop().await;
    for task in peers {
        task.abort();
    }
}
