//! The worker protocol against a real master and PostgreSQL, driven by hand-written peers:
//! hostile input, lease ownership, distinct workers, reissue on disconnect and expiry,
//! revocation on cancel.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer};
use grid_protocol::{MasterMessage, Outcome, PROTOCOL_VERSION, WorkerKind, WorkerMessage};
use grid_server::limits::Limits;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    hostile_messages_get_an_error_and_a_clean_close,
    replicas_go_to_distinct_workers_and_foreign_results_are_rejected,
    leases_of_a_vanished_worker_are_reissued_at_once,
    an_expired_lease_is_revoked_and_reissued,
    cancelling_a_job_revokes_its_leases,
);

async fn expect_error_and_close(peer: &mut Peer, code: &str) {
    match peer.recv().await {
        Some(MasterMessage::Error { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected an {code} error, got {other:?}"),
    }
    let close = peer.close_code().await;
    assert!(
        close.is_some_and(|c| c >= 1000),
        "no close frame: {close:?}"
    );
}

async fn hostile_messages_get_an_error_and_a_clean_close(backend: Backend) {
    let limits = Limits {
        max_ws_message_bytes: 8 * 1024,
        max_output_bytes: 1024,
        ws_messages_per_second: 5,
        ws_message_burst: 10,
        ..Limits::default()
    };
    let server = InProcessServer::start_with(backend, limits).await;

    // Garbage instead of a hello.
    let mut peer = Peer::connect(&server.ws()).await;
    peer.send_text("this is not json").await;
    expect_error_and_close(&mut peer, "bad_message").await;

    // A hello from the future.
    let mut peer = Peer::connect(&server.ws()).await;
    peer.send(&WorkerMessage::Hello {
        protocol: PROTOCOL_VERSION + 1,
        worker_id: "w".into(),
        slots: 1,
        kind: WorkerKind::Native,
        work: None,
    })
    .await;
    expect_error_and_close(&mut peer, "unsupported_protocol").await;

    // A worker of protocol 1 cannot run task modules: refused, told to upgrade.
    let mut peer = Peer::connect(&server.ws()).await;
    peer.send(&WorkerMessage::Hello {
        protocol: 1,
        worker_id: "old".into(),
        slots: 1,
        kind: WorkerKind::Native,
        work: None,
    })
    .await;
    expect_error_and_close(&mut peer, "unsupported_protocol").await;

    // Invalid identity and slot counts.
    for (worker_id, slots) in [("has spaces", 1), ("ok", 0), ("ok", 100_000)] {
        let mut peer = Peer::connect(&server.ws()).await;
        peer.send_text(&format!(
            r#"{{"type":"hello","protocol":{PROTOCOL_VERSION},"worker_id":"{worker_id}","slots":{slots},"kind":"native"}}"#
        ))
        .await;
        expect_error_and_close(&mut peer, "bad_message").await;
    }

    // Garbage, an unknown type, a second hello, binary frames after a good hello.
    let second_hello = format!(
        r#"{{"type":"hello","protocol":{PROTOCOL_VERSION},"worker_id":"again","slots":1,"kind":"native"}}"#
    );
    for bad in [
        "{",
        r#"{"type":"launch_missiles"}"#,
        r#"{"type":"result","lease":"one","outcome":{"ok":1}}"#,
        second_hello.as_str(),
    ] {
        let mut peer = Peer::join(&server.ws(), "hostile-1", 1).await;
        peer.send_text(bad).await;
        expect_error_and_close(&mut peer, "bad_message").await;
    }
    let mut peer = Peer::join(&server.ws(), "hostile-2", 1).await;
    use futures_util::SinkExt;
    peer.socket
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    expect_error_and_close(&mut peer, "bad_message").await;

    // An outcome over the output limit.
    let mut peer = Peer::join(&server.ws(), "hostile-3", 1).await;
    peer.send(&WorkerMessage::Result {
        lease: 1,
        outcome: Outcome::Ok(json!("z".repeat(2000))),
    })
    .await;
    expect_error_and_close(&mut peer, "too_large").await;

    // A frame over the message limit: the connection is closed, the master survives.
    let mut peer = Peer::join(&server.ws(), "hostile-4", 1).await;
    peer.send_text(&"x".repeat(64 * 1024)).await;
    let mut closed = false;
    for _ in 0..3 {
        match peer.recv().await {
            None => {
                closed = true;
                break;
            }
            Some(MasterMessage::Error { code, .. }) => assert_eq!(code, "too_large"),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(closed);

    // A flood of heartbeats.
    let mut peer = Peer::join(&server.ws(), "hostile-5", 1).await;
    for _ in 0..50 {
        if peer
            .socket
            .send(Message::Text(r#"{"type":"heartbeat"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    expect_error_and_close(&mut peer, "rate_limited").await;

    // After all that, the master still serves work.
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let job = api
        .submit(json!({"kernel": "echo", "inputs": [7], "redundancy": 1}))
        .await;
    let mut honest = Peer::join(&server.ws(), "honest", 1).await;
    let (lease, input) = honest.next_assignment().await;
    honest
        .send(&WorkerMessage::Result {
            lease,
            outcome: Outcome::Ok(input),
        })
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(20)).await;
    assert_eq!(finished["state"], "done");
    server.stop().await;
}

async fn replicas_go_to_distinct_workers_and_foreign_results_are_rejected(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let job = api
        .submit(json!({"kernel": "echo", "inputs": [{"n": 1}, {"n": 2}], "redundancy": 2}))
        .await;

    // A has room for 4 but may hold only one replica of each of the 2 chunks.
    let mut a = Peer::join(&server.ws(), "peer-a", 4).await;
    let a1 = a.next_assignment().await;
    let a2 = a.next_assignment().await;
    assert_ne!(a1.1, a2.1, "A got two replicas of one chunk");
    let mut b = Peer::join(&server.ws(), "peer-b", 4).await;
    let b1 = b.next_assignment().await;
    let b2 = b.next_assignment().await;
    assert_ne!(b1.1, b2.1);

    // B answers for A's lease, and for one that never existed: both rejected.
    for lease in [a1.0, 987_654_321] {
        b.send(&WorkerMessage::Result {
            lease,
            outcome: Outcome::Ok(json!("forged")),
        })
        .await;
        match b.recv().await {
            Some(MasterMessage::Rejected {
                lease: rejected, ..
            }) => assert_eq!(rejected, lease),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    let state = server
        .store
        .text(&format!("SELECT state FROM replicas WHERE id = {}", a1.0))
        .await;
    assert_eq!(state, "leased", "a forged result must change nothing");

    for (peer, assignments) in [(&mut a, [a1, a2]), (&mut b, [b1, b2])] {
        for (lease, input) in assignments {
            peer.send(&WorkerMessage::Result {
                lease,
                outcome: Outcome::Ok(input),
            })
            .await;
        }
    }
    let finished = api.wait_finished(job, Duration::from_secs(20)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(finished["replicas"]["issued"], 4);
    assert_eq!(finished["replicas"]["invalid"], 0);
    let results = api.results(job).await;
    assert_eq!(
        results,
        vec![
            json!({"index": 0, "output": {"n": 1}, "agreeing": 2}),
            json!({"index": 1, "output": {"n": 2}, "agreeing": 2}),
        ]
    );
    server.stop().await;
}

async fn leases_of_a_vanished_worker_are_reissued_at_once(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    // A long lease: only the disconnect can explain a quick reissue.
    let job = api
        .submit(json!({"kernel": "echo", "inputs": ["payload"], "redundancy": 1, "lease_seconds": 3600}))
        .await;
    let mut a = Peer::join(&server.ws(), "vanishing", 1).await;
    let (first_lease, _) = a.next_assignment().await;
    drop(a);

    let mut b = Peer::join(&server.ws(), "stayer", 1).await;
    let (lease, input) = tokio::time::timeout(Duration::from_secs(10), b.next_assignment())
        .await
        .expect("the chunk was not reissued after its worker disconnected");
    assert_ne!(lease, first_lease);
    assert_eq!(input, json!("payload"));
    b.send(&WorkerMessage::Result {
        lease,
        outcome: Outcome::Ok(input),
    })
    .await;
    let finished = api.wait_finished(job, Duration::from_secs(20)).await;
    assert_eq!(finished["state"], "done");
    assert_eq!(finished["replicas"]["expired"], 1);
    server.stop().await;
}

async fn an_expired_lease_is_revoked_and_reissued(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let job = api
        .submit(json!({"kernel": "echo", "inputs": [42], "redundancy": 1, "lease_seconds": 5}))
        .await;
    let mut slow = Peer::join(&server.ws(), "slow", 1).await;
    let (lease, _) = slow.next_assignment().await;
    // The slow worker keeps its connection but never answers: after 5 s the lease expires.
    match slow.recv().await {
        Some(MasterMessage::Revoke { leases }) => assert_eq!(leases, vec![lease]),
        other => panic!("expected a revoke, got {other:?}"),
    }
    // The same worker may take it again (its expired replica does not count); it answers now.
    let (again, input) = slow.next_assignment().await;
    assert_ne!(again, lease);
    // The late answer to the expired lease is rejected.
    slow.send(&WorkerMessage::Result {
        lease,
        outcome: Outcome::Ok(json!(42)),
    })
    .await;
    assert!(matches!(
        slow.recv().await,
        Some(MasterMessage::Rejected { lease: l, .. }) if l == lease
    ));
    slow.send(&WorkerMessage::Result {
        lease: again,
        outcome: Outcome::Ok(input),
    })
    .await;
    let finished = api.wait_finished(job, Duration::from_secs(20)).await;
    assert_eq!(finished["state"], "done");
    assert_eq!(finished["replicas"]["expired"], 1);
    server.stop().await;
}

async fn cancelling_a_job_revokes_its_leases(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let job = api
        .submit(json!({"kernel": "echo", "inputs": [1, 2, 3], "redundancy": 1}))
        .await;
    let mut peer = Peer::join(&server.ws(), "busy", 2).await;
    let (l1, _) = peer.next_assignment().await;
    let (l2, _) = peer.next_assignment().await;
    let (status, body) = api.delete(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(status, 200, "{body}");
    let mut revoked = Vec::new();
    while revoked.len() < 3 {
        match peer.recv().await {
            Some(MasterMessage::Revoke { leases }) => revoked.extend(leases),
            Some(MasterMessage::Assign { lease, .. }) => revoked.push(-lease),
            other => panic!("unexpected {other:?}"),
        }
        if revoked.contains(&l1) && revoked.contains(&l2) {
            break;
        }
    }
    assert!(
        revoked.contains(&l1) && revoked.contains(&l2),
        "{revoked:?}"
    );
    peer.send(&WorkerMessage::Result {
        lease: l1,
        outcome: Outcome::Ok(json!(1)),
    })
    .await;
    assert!(matches!(
        peer.recv().await,
        Some(MasterMessage::Rejected { .. })
    ));
    let (_, body) = api.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(body["state"], "cancelled");
    assert_eq!(body["chunks"]["done"], 0);
    server.stop().await;
}
