//! The worker against a fake master on a real socket: results, errors, revokes, reconnects,
//! failover, version mismatch, graceful drain, and the source address (`--bind`).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;

use common::{FakeMaster, RunningWorker, bounded};
use grid_protocol::{LeaseId, MasterMessage, Outcome, PROTOCOL_VERSION, Task, WorkerMessage};
use grid_worker::WorkerError;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Slow enough (about half a second; the workspace builds kernels optimised even in debug)
/// that a test can act while it computes.
fn slow_input() -> Value {
    json!({"start": 0, "end": 1_000_000_000})
}

/// π(10⁹).
const SLOW_COUNT: u64 = 50_847_534;

fn assign(lease: LeaseId, kernel: &str, input: Value) -> MasterMessage {
    MasterMessage::Assign {
        lease,
        task: Task::kernel(kernel),
        input,
        deadline_seconds: 600,
    }
}

#[tokio::test]
async fn computes_revokes_and_reconnects_after_a_malformed_frame() {
    let (master, url) = FakeMaster::bind().await;
    let mut worker = RunningWorker::spawn(vec![url], "native-test-session", 1);

    let mut conn = master.accept().await;
    let (worker_id, slots) = conn.expect_hello().await;
    assert_eq!((worker_id.as_str(), slots), ("native-test-session", 1));
    conn.welcome().await;

    conn.send(&assign(1, "echo", json!({"a": [1, 2, 3]}))).await;
    conn.send(&assign(2, "echo", json!("two"))).await;
    conn.send(&assign(3, "no-such-kernel", json!({}))).await;
    let mut results = BTreeMap::new();
    while results.len() < 3 {
        match conn.recv().await {
            WorkerMessage::Result { lease, outcome } => {
                assert!(
                    results.insert(lease, outcome).is_none(),
                    "lease {lease} twice"
                );
            }
            other => panic!("expected a result, got {other:?}"),
        }
    }
    assert_eq!(results[&1], Outcome::Ok(json!({"a": [1, 2, 3]})));
    assert_eq!(results[&2], Outcome::Ok(json!("two")));
    match &results[&3] {
        Outcome::Err(message) => assert!(message.contains("no-such-kernel"), "{message}"),
        other => panic!("unknown kernel gave {other:?}"),
    }

    // One slot: lease 4 computes, lease 5 waits in the queue until the master revokes it.
    conn.send(&assign(4, "primes", slow_input())).await;
    conn.send(&assign(5, "echo", json!(5))).await;
    conn.send(&MasterMessage::Revoke { leases: vec![5] }).await;
    let before = conn.sync().await;
    assert!(
        before
            .iter()
            .all(|m| !matches!(m, WorkerMessage::Result { lease: 5, .. })),
        "{before:?}"
    );

    // Garbage from the master ends the session with a protocol close...
    conn.send_frame(Message::text("{this is not json")).await;
    let mut frames = Vec::new();
    loop {
        match conn.next_frame().await {
            None => break,
            Some(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Protocol));
                break;
            }
            Some(frame) => frames.push(frame),
        }
    }
    let revoked_result_sent = frames.iter().any(|frame| match frame {
        Message::Text(text) => matches!(
            WorkerMessage::from_json(text),
            Ok(WorkerMessage::Result { lease: 5, .. })
        ),
        _ => false,
    });
    assert!(!revoked_result_sent, "{frames:?}");

    // ...and the worker comes back under the same identity.
    let mut again = master.accept().await;
    let (worker_id, slots) = again.expect_hello().await;
    assert_eq!((worker_id.as_str(), slots), ("native-test-session", 1));

    // Shut down before the welcome: no session to drain, the worker just leaves.
    worker.shut_down();
    worker.finished().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_drains() {
    let (master, url) = FakeMaster::bind().await;
    let mut worker = RunningWorker::spawn(vec![url], "native-test-drain", 1);

    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.welcome().await;
    // One slot: 10 computes, 11 and 12 wait; 12 is revoked so it is neither run nor released.
    conn.send(&assign(10, "primes", slow_input())).await;
    conn.send(&assign(11, "primes", slow_input())).await;
    conn.send(&assign(12, "echo", json!(12))).await;
    conn.send(&MasterMessage::Revoke { leases: vec![12] }).await;
    let before = conn.sync().await;
    assert_eq!(before, [], "nothing should have finished yet");

    worker.shut_down();
    assert_eq!(conn.recv().await, WorkerMessage::Drain);
    assert_eq!(
        conn.recv().await,
        WorkerMessage::Release { leases: vec![11] }
    );
    assert_eq!(
        conn.recv().await,
        WorkerMessage::Result {
            lease: 10,
            outcome: Outcome::Ok(json!({"count": SLOW_COUNT})),
        }
    );
    conn.expect_close(CloseCode::Normal).await;
    worker.finished().await.unwrap();
}

#[tokio::test]
async fn fails_over_to_the_next_server() {
    // A port nobody listens on: bind, note it, close.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        url::Url::parse(&format!("ws://{address}/ws")).unwrap()
    };
    let (master, url) = FakeMaster::bind().await;
    let mut worker = RunningWorker::spawn(vec![dead, url], "native-test-failover", 2);

    let mut conn = master.accept().await;
    let (worker_id, slots) = conn.expect_hello().await;
    assert_eq!((worker_id.as_str(), slots), ("native-test-failover", 2));
    conn.welcome().await;
    conn.send(&assign(1, "primes", json!({"start": 0, "end": 100})))
        .await;
    assert_eq!(
        conn.recv().await,
        WorkerMessage::Result {
            lease: 1,
            outcome: Outcome::Ok(json!({"count": 25})),
        }
    );

    worker.shut_down();
    assert_eq!(conn.recv().await, WorkerMessage::Drain);
    conn.expect_close(CloseCode::Normal).await;
    worker.finished().await.unwrap();
}

#[tokio::test]
async fn a_protocol_version_refusal_is_final() {
    let (master, url) = FakeMaster::bind().await;
    let worker = RunningWorker::spawn(vec![url], "native-test-version", 1);

    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.send(&MasterMessage::Error {
        code: "unsupported_protocol".into(),
        message: format!("this master speaks protocol {}", PROTOCOL_VERSION + 1),
    })
    .await;
    let error = worker.finished().await.unwrap_err();
    assert!(
        matches!(error, WorkerError::ProtocolMismatch { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn other_refusals_are_retried() {
    let (master, url) = FakeMaster::bind().await;
    let mut worker = RunningWorker::spawn(vec![url], "native-test-refused", 1);

    let mut conn = master.accept().await;
    conn.expect_hello().await;
    conn.send(&MasterMessage::Error {
        code: "rate_limited".into(),
        message: "slow down".into(),
    })
    .await;
    drop(conn);
    let mut again = master.accept().await;
    assert_eq!(again.expect_hello().await.0, "native-test-refused");

    worker.shut_down();
    worker.finished().await.unwrap();
}

#[tokio::test]
async fn shutdown_without_a_master_returns_at_once() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        url::Url::parse(&format!("ws://{address}/ws")).unwrap()
    };
    let mut worker = RunningWorker::spawn(vec![dead], "native-test-alone", 1);
    worker.shut_down();
    bounded("shutdown", worker.finished()).await.unwrap();
}

#[tokio::test]
async fn the_binary_connects_from_the_bind_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let identity = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_grid-worker"))
        .args(["--server", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--bind", "127.0.3.7", "--threads", "1", "--identity-file"])
        .arg(identity.path().join("id"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let (mut tcp, peer) = bounded("the worker's connection", listener.accept())
        .await
        .unwrap();
    assert_eq!(peer.ip(), "127.0.3.7".parse::<std::net::IpAddr>().unwrap());
    // The WebSocket upgrade goes over that very connection.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(bounded("the upgrade request", tcp.read_u8()).await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );

    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_bound_worker_computes_like_any_other() {
    let (master, url) = FakeMaster::bind().await;
    let mut config = grid_worker::WorkerConfig::new(vec![url], "native-test-bound");
    config.threads = 1;
    config.bind = Some("127.0.3.8".parse().unwrap());
    let mut worker = RunningWorker::spawn_with(config);

    let mut conn = master.accept().await;
    assert_eq!(conn.expect_hello().await.0, "native-test-bound");
    conn.welcome().await;
    conn.send(&assign(1, "echo", json!([1, 2]))).await;
    assert_eq!(
        conn.recv().await,
        WorkerMessage::Result {
            lease: 1,
            outcome: Outcome::Ok(json!([1, 2])),
        }
    );
    worker.shut_down();
    assert_eq!(conn.recv().await, WorkerMessage::Drain);
    conn.expect_close(CloseCode::Normal).await;
    worker.finished().await.unwrap();
}
