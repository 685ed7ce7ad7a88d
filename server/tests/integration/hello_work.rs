//! The proof of work a master may ask of new worker sessions (`--hello-work-bits`): asked of
//! sessions outside the trusted networks only, one fresh challenge per connection, a wrong or
//! borrowed answer refused with `bad_work`, and real `grid-worker` processes that pay it and
//! compute a job.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::IpAddr;
use std::time::Duration;

use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer, spawn_worker_with};
use grid_protocol::{MasterMessage, PROTOCOL_VERSION, WorkerKind, WorkerMessage, work};
use grid_server::ServeOptions;
use grid_server::limits::Limits;
use grid_server::network::NetworkPolicy;
use serde_json::json;

on_both_backends!(
    sessions_pay_a_fresh_proof_of_work_and_a_wrong_one_is_refused,
    native_workers_pay_the_proof_of_work_and_compute,
);

const BITS: u32 = 14;

/// A master asking `BITS` bits of work of sessions outside `trusted` (a CIDR list).
async fn master_asking_for_work(backend: Backend, trusted: &str) -> InProcessServer {
    let options = ServeOptions {
        networks: NetworkPolicy::parse("24,48", trusted, "").unwrap(),
        limits: Limits {
            hello_work_bits: BITS,
            ..Limits::default()
        },
        ..ServeOptions::default()
    };
    InProcessServer::start_with_options(backend, options).await
}

fn hello(worker_id: &str, work: Option<u64>) -> WorkerMessage {
    WorkerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        worker_id: worker_id.into(),
        slots: 1,
        kind: WorkerKind::Native,
        work,
    }
}

/// Say hello from `source` and return the challenge's seed.
async fn challenged(server: &InProcessServer, source: &str, worker_id: &str) -> (Peer, String) {
    let source: IpAddr = source.parse().unwrap();
    let mut peer = Peer::connect_from(&server.ws(), source).await;
    peer.send(&hello(worker_id, None)).await;
    match peer.recv().await {
        Some(MasterMessage::Challenge { seed, bits }) => {
            assert_eq!(bits, BITS);
            assert_eq!(seed.len(), 32, "16 random bytes, hex: {seed}");
            (peer, seed)
        }
        other => panic!("expected a challenge, got {other:?}"),
    }
}

async fn expect_bad_work(peer: &mut Peer) {
    match peer.recv().await {
        Some(MasterMessage::Error { code, message }) => {
            assert_eq!(code, "bad_work", "{message}");
        }
        other => panic!("expected the bad_work error, got {other:?}"),
    }
    assert_eq!(peer.close_code().await, Some(1008));
}

async fn sessions_pay_a_fresh_proof_of_work_and_a_wrong_one_is_refused(backend: Backend) {
    // Trusted: 127.0.0.0/24 only. Everything else on loopback is an outside network.
    let server = master_asking_for_work(backend, "127.0.0.0/24").await;

    // The right answer is welcomed.
    let (mut peer, seed) = challenged(&server, "127.0.7.1", "payer").await;
    let answer = work::solve(&seed, "payer", BITS);
    peer.send(&hello("payer", Some(answer))).await;
    assert!(matches!(
        peer.recv().await,
        Some(MasterMessage::Welcome { .. })
    ));

    // Each connection gets a seed of its own: the old answer does not open a new session.
    let (mut replay, fresh_seed) = challenged(&server, "127.0.7.2", "payer").await;
    assert_ne!(fresh_seed, seed, "every connection is challenged afresh");
    // (Should the old answer solve the new seed by chance, 1 in 2^14, send its neighbour.)
    let replayed = if work::is_solution(&fresh_seed, "payer", BITS, answer) {
        answer + 1
    } else {
        answer
    };
    replay.send(&hello("payer", Some(replayed))).await;
    expect_bad_work(&mut replay).await;

    // An answer for another identity does not serve this one.
    let (mut borrower, seed) = challenged(&server, "127.0.7.3", "borrower").await;
    let borrowed = (0..u64::MAX)
        .find(|n| {
            work::is_solution(&seed, "lender", BITS, *n)
                && !work::is_solution(&seed, "borrower", BITS, *n)
        })
        .unwrap();
    borrower.send(&hello("borrower", Some(borrowed))).await;
    expect_bad_work(&mut borrower).await;

    // No answer at all (a second plain hello) is refused too.
    let (mut stubborn, _) = challenged(&server, "127.0.7.4", "stubborn").await;
    stubborn.send(&hello("stubborn", None)).await;
    expect_bad_work(&mut stubborn).await;

    // A trusted network is not asked.
    let mut local = Peer::connect_from(&server.ws(), "127.0.0.1".parse().unwrap()).await;
    local.send(&hello("local", None)).await;
    assert!(matches!(
        local.recv().await,
        Some(MasterMessage::Welcome { .. })
    ));
    server.stop().await;
}

async fn native_workers_pay_the_proof_of_work_and_compute(backend: Backend) {
    // Nothing trusted: two workers on two networks, both challenged.
    let server = master_asking_for_work(backend, "").await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let home = tempfile::tempdir().unwrap();
    let _workers: Vec<_> = ["127.0.5.1", "127.0.6.1"]
        .iter()
        .enumerate()
        .map(|(i, source)| {
            spawn_worker_with(
                &[&server.ws()],
                2,
                &home.path().join(format!("w{i}.id")),
                &["--bind", source],
            )
        })
        .collect();
    let inputs: Vec<_> = (0..40).map(|i| json!({"i": i})).collect();
    let job = api
        .submit(json!({"kernel": "echo", "inputs": inputs, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(90)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(job).await;
    assert_eq!(results.len(), 40);
    for (line, input) in results.iter().zip(&inputs) {
        assert_eq!(&line["output"], input);
        assert_eq!(line["agreeing"], 2);
    }
    // Both sessions paid: the master counted no refusal, and both identities hold results.
    assert_eq!(
        server
            .store
            .count(&format!(
                "SELECT count(DISTINCT worker_id) FROM replicas WHERE job_id = {job}"
            ))
            .await,
        2
    );
    server.stop().await;
}
