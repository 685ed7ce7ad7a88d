//! The load generator against a real master (in-process, embedded store): honest simulated
//! workers finish a job with the right results, and colluding saboteurs really lie.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use grid_loadgen::config::worker_endpoint;
use grid_loadgen::sabotage::colluding_lie;
use grid_loadgen::{LoadConfig, Sabotage, StopWhen};
use grid_protocol::Outcome;
use serde_json::{Value, json};

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
