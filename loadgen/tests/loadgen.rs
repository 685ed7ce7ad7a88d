//! The load generator against a real master (in-process, embedded store): honest simulated
//! workers finish a job with the right results, colluding saboteurs really lie, and every
//! attack really runs (the master's answer to them is tested elsewhere). Source addresses and
//! the sybils' connection order are checked against a plain TCP listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use grid_loadgen::config::worker_endpoint;
use grid_loadgen::sabotage::colluding_lie;
use grid_loadgen::{Attack, LoadConfig, Report, Sabotage, StopWhen};
use grid_protocol::Outcome;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use common::Master;

/// Bound on every run: generous, the jobs here take well under a second of master time.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn inputs(count: usize) -> Vec<Value> {
    (0..count).map(|i| json!({"i": i})).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_workers_finish_an_echo_job_with_correct_results() {
    let master = Master::start().await;
    let inputs = inputs(500);
    let job = master.submit("echo", &inputs, 2).await;

    let mut config = LoadConfig::new(worker_endpoint(&master.url()).unwrap(), 20);
    config.slots = 2;
    config.seed = 7;
    let run = grid_loadgen::run(config, async {
        master.finished(job).await;
    });
    let Ok(report) = tokio::time::timeout(RUN_LIMIT, run).await else {
        panic!("the job did not finish in time: {}", master.job(job).await);
    };
    let report = report.expect("the run failed");

    let view = master.job(job).await;
    assert_eq!(view["state"], "done", "{view}");
    assert_eq!(view["chunks"]["done"], 500, "{view}");
    assert_eq!(view["replicas"]["invalid"], 0, "{view}");
    let results = master.results(job).await;
    assert_eq!(results.len(), 500);
    for (index, line) in results.iter().enumerate() {
        assert_eq!(line["index"], index, "{line}");
        assert_eq!(line["output"], inputs[index], "{line}");
        assert_eq!(line["agreeing"], 2, "{line}");
    }

    assert_eq!(report.sessions, 20, "{report}");
    assert_eq!(report.connection_errors(), 0, "{report}");
    assert_eq!(report.lies, 0, "{report}");
    // Every replica the master counted came from us (a few more may have crossed a revoke).
    let returned = view["replicas"]["returned"].as_u64().unwrap();
    assert!(
        returned >= 1000 && returned <= report.results,
        "{view}\n{report}"
    );
    assert!(report.first_assignment.count > 0 && report.turnaround.count > 0);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colluding_saboteurs_lie_and_are_outvoted_sometimes() {
    let master = Master::start().await;
    let inputs = inputs(200);
    let job = master.submit("echo", &inputs, 2).await;

    // 3 of 10 lie together: chunks that meet one honest worker and one liar disagree, and the
    // tie-break replica makes one side invalid.
    let mut config = LoadConfig::new(worker_endpoint(&master.url()).unwrap(), 10);
    config.saboteurs = 3;
    config.sabotage = Sabotage::Colluding;
    config.seed = 3;
    config.stop = StopWhen::Shutdown;
    let run = grid_loadgen::run(config, async {
        master.finished(job).await;
    });
    let Ok(report) = tokio::time::timeout(RUN_LIMIT, run).await else {
        panic!("the job did not finish in time: {}", master.job(job).await);
    };
    let report = report.expect("the run failed");

    let view = master.job(job).await;
    assert!(report.lies > 0, "{report}");
    let invalid = view["replicas"]["invalid"].as_i64().unwrap();
    assert!(invalid > 0, "no replica counted invalid: {view}");
    // The liars are consistent, not random: every accepted output is the truth or the one lie
    // all colluders tell for that input. (How many lies win is the verifier's business: with
    // 3 colluders in 10 and plain 2-voting, some chunks see only liars.)
    let results = master.results(job).await;
    assert_eq!(results.len(), 200, "{view}");
    for line in &results {
        let index = line["index"].as_u64().unwrap() as usize;
        let truth = Outcome::Ok(inputs[index].clone());
        let Outcome::Ok(lie) = colluding_lie(3, &inputs[index], &truth) else {
            panic!("a colluding lie is an output");
        };
        assert!(
            line["output"] == inputs[index] || line["output"] == lie,
            "chunk {index}: neither the truth nor the colluders' lie: {line}"
        );
    }
    master.stop().await;
}

/// A run of `config` that stops once `job` is done, failed or cancelled.
async fn run_job(master: &Master, job: i64, config: LoadConfig) -> Report {
    let run = grid_loadgen::run(config, async {
        master.finished(job).await;
    });
    let Ok(report) = tokio::time::timeout(RUN_LIMIT, run).await else {
        panic!("the job did not end in time: {}", master.job(job).await);
    };
    report.expect("the run failed")
}

/// A run of `config` that stops once `job` is finished or after `limit`, whichever is first:
/// for attacks the master may take a while to undo (forgeries it refutes, then re-verifies),
/// where these tests check what the attackers did, not what the master decided.
async fn run_for(master: &Master, job: i64, config: LoadConfig, limit: Duration) -> Report {
    let run = grid_loadgen::run(config, async {
        tokio::select! {
            _ = master.finished(job) => {}
            () = tokio::time::sleep(limit) => {}
        }
    });
    let Ok(report) = tokio::time::timeout(RUN_LIMIT, run).await else {
        panic!("the run did not end in time: {}", master.job(job).await);
    };
    report.expect("the run failed")
}

/// A run in the background, until [`Background::stop`].
struct Background {
    stop: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<Report, grid_loadgen::LoadError>>,
}

impl Background {
    fn start(config: LoadConfig) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(grid_loadgen::run(config, async {
            let _ = stopped.await;
        }));
        Background { stop, run }
    }

    async fn stop(self) -> Report {
        let _ = self.stop.send(());
        tokio::time::timeout(RUN_LIMIT, self.run)
            .await
            .expect("the run did not stop")
            .unwrap()
            .unwrap()
    }
}

/// The WebSocket URL of a plain TCP listener (only the connections' source addresses matter).
fn socket_url(listener: &TcpListener) -> url::Url {
    worker_endpoint(&format!("ws://{}/ws", listener.local_addr().unwrap())).unwrap()
}

/// The next connection to `listener`.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let accepted = tokio::time::timeout(RUN_LIMIT, listener.accept()).await;
    accepted.expect("too few connections").unwrap()
}

fn ips(addresses: &[&str]) -> Vec<IpAddr> {
    addresses.iter().map(|a| a.parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_connect_from_their_source_addresses_round_robin() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = LoadConfig::new(socket_url(&listener), 5);
    config.saboteurs = 2;
    config.attack = Some(Attack::Release);
    config.bind = ips(&["127.0.1.1", "127.0.2.1", "127.0.3.1"]);
    config.attacker_bind = ips(&["127.0.9.1", "127.0.10.1"]);
    let run = Background::start(config);

    let mut seen = Vec::new();
    let mut held = Vec::new();
    while seen.len() < 5 {
        let (tcp, peer) = accept(&listener).await;
        seen.push(peer.ip());
        held.push(tcp);
    }
    seen.sort_unstable();
    let mut expected = ips(&[
        "127.0.1.1",
        "127.0.2.1",
        "127.0.3.1",
        "127.0.9.1",
        "127.0.10.1",
    ]);
    expected.sort_unstable();
    assert_eq!(seen, expected);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sybils_connect_first_one_after_the_other() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = LoadConfig::new(socket_url(&listener), 5);
    config.saboteurs = 2;
    config.attack = Some(Attack::Sybil);
    config.bind = ips(&["127.0.1.1"]);
    config.attacker_bind = ips(&["127.0.9.1", "127.0.10.1"]);
    let run = Background::start(config);

    // Closing every attacker connection at once ends each attacker's first try and lets the
    // next one go (attackers then retry, interleaved with the rest); the honest workers come
    // only after both attackers' first tries.
    let (sybil_a, sybil_b, honest) = (
        ips(&["127.0.9.1"])[0],
        ips(&["127.0.10.1"])[0],
        ips(&["127.0.1.1"])[0],
    );
    let mut order = Vec::new();
    let mut held = Vec::new();
    while order.iter().filter(|&&ip| ip == honest).count() < 3 {
        let (tcp, peer) = accept(&listener).await;
        order.push(peer.ip());
        if peer.ip() == honest {
            held.push(tcp);
        }
    }
    let first = |wanted: IpAddr| order.iter().position(|&ip| ip == wanted).unwrap();
    assert_eq!(first(sybil_a), 0, "{order:?}");
    assert!(first(sybil_b) < first(honest), "{order:?}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sybils_send_the_one_forgery() {
    let master = Master::start().await;
    let job = master.submit("echo", &inputs(100), 2).await;
    let mut config = LoadConfig::new(worker_endpoint(&master.url()).unwrap(), 4);
    config.saboteurs = 2;
    config.attack = Some(Attack::Sybil);
    let report = run_for(&master, job, config, Duration::from_secs(10)).await;

    assert_eq!(report.attack, Some("sybil"));
    assert!(report.attackers.connections >= 2, "{report}");
    assert!(report.honest.connections >= 2, "{report}");
    assert!(report.attackers.results > 0, "{report}");
    assert_eq!(report.lies, report.attackers.results, "{report}");
    assert_eq!(report.honest.released + report.attackers.released, 0);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_attackers_hand_every_lease_back() {
    let master = Master::start().await;
    let job = master.submit("echo", &inputs(100), 2).await;
    let mut config = LoadConfig::new(worker_endpoint(&master.url()).unwrap(), 3);
    config.saboteurs = 1;
    config.attack = Some(Attack::Release);
    config.attacker_slots = Some(16);
    let report = run_job(&master, job, config).await;

    assert!(report.attackers.released > 0, "{report}");
    assert_eq!(report.attackers.released, report.attackers.assignments);
    assert_eq!(report.attackers.results, 0, "{report}");
    assert!(report.honest.results > 0, "{report}");
    assert_eq!(report.honest.released, 0, "{report}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["attackers"]["released"],
        json!(report.attackers.released)
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_attackers_use_a_new_identity_per_connection() {
    let master = Master::start().await;
    let job = master.submit("echo", &inputs(200), 2).await;
    let mut config = LoadConfig::new(worker_endpoint(&master.url()).unwrap(), 4);
    config.saboteurs = 2;
    config.attack = Some(Attack::Rotate { after: 2 });
    let report = run_for(&master, job, config, Duration::from_secs(10)).await;

    assert!(report.attackers.connections > 2, "{report}");
    assert_eq!(
        report.attackers.identities, report.attackers.connections,
        "{report}"
    );
    assert!(report.attackers.results > 0, "{report}");
    assert_eq!(report.honest.identities, 2, "{report}");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_attackers_reconnect_under_one_identity() {
    let master = Master::start().await;
    let job = master.submit("echo", &inputs(500), 2).await;
    let mut config = LoadConfig::new(worker_endpoint(&master.url()).unwrap(), 3);
    config.saboteurs = 1;
    config.attack = Some(Attack::Drop {
        hold: Duration::from_millis(50),
    });
    // 1,000 replicas of 2 ms on 4 honest slots: the job outlasts several holds.
    config.slots = 2;
    config.compute = Duration::from_millis(2);
    let report = run_job(&master, job, config).await;

    assert!(report.attackers.connections > 1, "{report}");
    assert_eq!(report.attackers.identities, 1, "{report}");
    assert!(report.attackers.assignments > 0, "{report}");
    assert_eq!(report.attackers.results, 0, "{report}");
    // Deliberate disconnects are not lost sessions.
    assert_eq!(report.sessions_lost, 0, "{report}");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hoarders_announce_many_slots_and_never_answer() {
    let master = Master::start().await;
    master.submit("echo", &inputs(100), 1).await;
    let mut config = LoadConfig::new(worker_endpoint(&master.url()).unwrap(), 2);
    config.saboteurs = 1;
    config.attack = Some(Attack::Hoard);
    // The hoarder holds its leases until they expire: the job cannot end during the run.
    config.stop = StopWhen::After(Duration::from_secs(2));
    let report = tokio::time::timeout(RUN_LIMIT, grid_loadgen::run(config, std::future::pending()))
        .await
        .expect("the run did not stop")
        .unwrap();

    assert!(report.attackers.assignments > 1, "{report}");
    assert_eq!(report.attackers.results, 0, "{report}");
    assert_eq!(report.attackers.released, 0, "{report}");
    master.stop().await;
}
