//! The replica counters on the jobs row (what job views read) equal a recount of the replicas
//! after jobs that went through what changes them: lies caught by the master's own check
//! (invalid verdicts, blacklisting, backtracking that reopens accepted chunks), chunks that
//! failed, a lease that expired with its worker gone, and a cancel that revoked a live lease.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer};
use futures_util::StreamExt;
use grid_protocol::{MasterMessage, Outcome, WorkerMessage};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(counters_equal_a_recount_after_lies_failures_expiry_and_cancel);

/// A peer answering every assignment: with a forged output when `lying`, else as the echo
/// kernel does, except that an input `{"fail": true}` gets an error (as the kernel refusing
/// it would: honest peers agree on it, so the chunk fails).
fn spawn_peer(ws: String, id: &'static str, lying: bool) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut peer = Peer::join(&ws, id, 1).await;
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
            let outcome = if lying {
                Outcome::Ok(json!({"forged": true}))
            } else if input["fail"] == true {
                Outcome::Err("refused".into())
            } else {
                Outcome::Ok(input)
            };
            peer.send(&WorkerMessage::Result { lease, outcome }).await;
        }
    })
}

/// Answer assignments (spot-checks of earlier echo jobs: their input is the answer) until one
/// of the job whose inputs have the field `field` arrives, and keep that one.
async fn take_a_chunk_of(peer: &mut Peer, field: &str) {
    loop {
        let (lease, input) = peer.next_assignment().await;
        if input.get(field).is_some() {
            return;
        }
        peer.send(&WorkerMessage::Result {
            lease,
            outcome: Outcome::Ok(input),
        })
        .await;
    }
}

async fn view(api: &Api, job: i64) -> Value {
    let (status, body) = api.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The replica counters recounted from the replicas table (ringers excluded, as in views).
async fn recount(server: &InProcessServer, job: i64) -> Value {
    let count = |condition: &'static str| {
        let sql = format!(
            "SELECT count(*) FROM replicas WHERE job_id = {job} AND NOT ringer {condition}"
        );
        async move { server.store.count(&sql).await }
    };
    json!({
        "issued": count("").await,
        "returned": count("AND state = 'returned'").await,
        "invalid": count("AND verdict = 'invalid'").await,
        "expired": count("AND state = 'expired'").await,
    })
}

/// Wait (bounded) until `check` holds for the job's view.
async fn wait_view(api: &Api, job: i64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = view(api, job).await;
        if check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job}: {what} never happened: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn counters_equal_a_recount_after_lies_failures_expiry_and_cancel(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);

    // Two colluders get their forged outputs accepted; the master's own check refutes them:
    // both are blacklisted and the chunks are reopened (backtracking).
    let liars = [
        spawn_peer(server.ws(), "liar-1", true),
        spawn_peer(server.ws(), "liar-2", true),
    ];
    let inputs: Vec<Value> = (0..6).map(|i| json!({"i": i})).collect();
    let lied = api
        .submit(json!({"kernel": "echo", "inputs": inputs, "redundancy": 2}))
        .await;
    wait_view(&api, lied, "backtracking", |body| {
        body["chunks"]["revised"].as_i64() > Some(0)
    })
    .await;
    // Honest peers redo the reopened chunks; a second job has two chunks that fail.
    let honest = [
        spawn_peer(server.ws(), "honest-1", false),
        spawn_peer(server.ws(), "honest-2", false),
    ];
    let finished = api.wait_finished(lied, Duration::from_secs(90)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let outputs: Vec<Value> = api
        .results(lied)
        .await
        .iter()
        .map(|line| line["output"].clone())
        .collect();
    assert_eq!(
        outputs, inputs,
        "the re-verified results are the right ones"
    );
    assert!(
        finished["replicas"]["invalid"].as_i64() > Some(0),
        "{finished}"
    );
    let failing = api
        .submit(json!({"kernel": "echo", "redundancy": 2,
                       "inputs": [{"i": 0}, {"fail": true}, {"i": 2}, {"fail": true}]}))
        .await;
    let finished = api.wait_finished(failing, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "failed", "{finished}");
    assert_eq!(finished["chunks"]["failed"], 2, "{finished}");
    for task in liars.into_iter().chain(honest) {
        task.abort();
    }

    // A worker that takes a chunk and vanishes (its lease expires), then one that holds a
    // lease when the job is cancelled (revoked).
    let cancelled = api
        .submit(
            json!({"kernel": "echo", "inputs": [{"c": 0}, {"c": 1}, {"c": 2}], "redundancy": 2}),
        )
        .await;
    let mut quitter = Peer::join(&server.ws(), "quitter", 1).await;
    take_a_chunk_of(&mut quitter, "c").await;
    drop(quitter);
    wait_view(&api, cancelled, "an expiry", |body| {
        body["replicas"]["expired"].as_i64() > Some(0)
    })
    .await;
    let mut holder = Peer::join(&server.ws(), "holder", 2).await;
    take_a_chunk_of(&mut holder, "c").await;
    let (status, body) = api.delete(&format!("/api/v1/jobs/{cancelled}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");

    // Every view's counters are the recount (read until both agree at one moment: the
    // scheduler may still be committing a last round).
    for job in [lied, failing, cancelled] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let shown = view(&api, job).await["replicas"].clone();
            let counted = recount(&server, job).await;
            if shown == counted {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job}: the view says {shown}, the replicas say {counted}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, list) = api.get("/api/v1/jobs").await;
    for listed in list["jobs"].as_array().unwrap() {
        let job = listed["id"].as_i64().unwrap();
        assert_eq!(listed["replicas"], recount(&server, job).await, "job {job}");
    }
    drop(holder);
    server.stop().await;
}
