//! Bounded chaos: for about a minute, every few seconds, a random master is killed with
//! SIGKILL (and restarted on its port), or a third of the workers are (and started again),
//! or the PostgreSQL primary's postmaster is (its synchronous standby promoted, the dead
//! primary rebuilt as the new primary's standby). Two masters share the replicated database
//! through one two-host URL; six native workers know both masters. Throughout, the number of
//! accepted chunks never goes down; at the end the job is done with every chunk exactly once
//! and every answer right.
//!
//! A binary of its own, like `replication.rs`: it starts and kills PostgreSQL servers, and
//! loads the machine more than the integration tests beside it could bear.
#![allow(clippy::unwrap_used)]

#[path = "integration/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::clusters::{Cluster, free_port, primary_and_standby, standby_of};
use common::{
    ADMIN_TOKEN, Api, Home, Process, primes_inputs, primes_reference, primes_total,
    spawn_server_process, spawn_worker_failover,
};
use serde_json::json;

/// What one round of chaos kills.
#[derive(Debug, Clone, Copy)]
enum Blow {
    Master,
    ThirdOfWorkers,
    Primary,
}

/// A small deterministic generator, so a failing run can be replayed from its printed seed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Kill the primary, promote the standby, rebuild the dead primary as the new one's standby
/// (same directory and port) and make the new primary wait for it again.
async fn fail_over(primary: Cluster, standby: Cluster) -> (Cluster, Cluster) {
    let (new_primary, rebuilt) = tokio::task::spawn_blocking(move || {
        primary.kill_postmaster();
        standby.promote();
        let (data, port) = (primary.data.clone(), primary.port);
        // Its directory becomes the new standby's: nothing left to stop.
        std::mem::forget(primary);
        let rebuilt = standby_of(&standby, data, port);
        (standby, rebuilt)
    })
    .await
    .unwrap();
    new_primary.require_standby(true).await;
    new_primary.wait_synchronous().await;
    (new_primary, rebuilt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_killing_masters_workers_and_the_primary_loses_nothing() {
    let seed: u64 = std::env::var("GRID_CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() | 1);
    eprintln!("chaos seed {seed} (GRID_CHAOS_SEED={seed} replays it)");
    let mut dice = Dice(seed);

    let root = tempfile::tempdir().unwrap();
    let (mut primary, mut standby) = primary_and_standby(root.path()).await;
    let home = Home::Url(format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres",
        primary.port, standby.port
    ));
    let ports = [free_port(), free_port()];
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut masters: Vec<Process> = listen
        .iter()
        .map(|address| spawn_server_process(&home, address).0)
        .collect();
    let apis: Vec<Api> = listen
        .iter()
        .map(|address| Api::new(&format!("http://{address}"), ADMIN_TOKEN))
        .collect();
    let ws: Vec<String> = listen.iter().map(|a| format!("ws://{a}/ws")).collect();
    let identities = tempfile::tempdir().unwrap();
    let worker = |i: usize| {
        let servers = if i.is_multiple_of(2) {
            [ws[0].as_str(), ws[1].as_str()]
        } else {
            [ws[1].as_str(), ws[0].as_str()]
        };
        spawn_worker_failover(&servers, 1, &identities.path().join(format!("w{i}.id")))
    };
    let mut workers: Vec<Process> = (0..6).map(worker).collect();

    // More work than a minute of chaos on this machine's two cores.
    const CHUNKS: u64 = 1200;
    let inputs = primes_inputs(
        700_000_000_000,
        700_000_000_000 + CHUNKS * 50_000_000,
        CHUNKS,
    );
    let expected = primes_reference(&inputs);
    let job = apis[0]
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    apis[0].wait_progress(job, 10).await;

    // Every kind of blow at least twice (the primary twice), in a seeded order.
    let mut blows = vec![
        Blow::Master,
        Blow::Master,
        Blow::Master,
        Blow::Master,
        Blow::ThirdOfWorkers,
        Blow::ThirdOfWorkers,
        Blow::ThirdOfWorkers,
        Blow::ThirdOfWorkers,
        Blow::Primary,
        Blow::Primary,
    ];
    for i in (1..blows.len()).rev() {
        blows.swap(i, dice.below(i + 1));
    }

    let mut accepted = 0i64;
    let mut dealt = Vec::new();
    let started = Instant::now();
    for blow in blows {
        // A few seconds of work between blows, watching that nothing accepted is lost.
        let pause = Instant::now() + Duration::from_millis(3_000 + 1_000 * dice.below(4) as u64);
        while Instant::now() < pause {
            for api in &apis {
                let (status, body) = api.get(&format!("/api/v1/jobs/{job}")).await;
                if status == 200 {
                    let done = body["chunks"]["done"].as_i64().unwrap();
                    assert!(
                        done >= accepted,
                        "accepted chunks went from {accepted} to {done} (seed {seed})"
                    );
                    accepted = done;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if accepted == CHUNKS as i64 {
            break;
        }
        let at = Instant::now();
        match blow {
            Blow::Master => {
                let victim = dice.below(masters.len());
                masters[victim].kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                masters[victim] = spawn_server_process(&home, &listen[victim]).0;
            }
            Blow::ThirdOfWorkers => {
                let first = dice.below(workers.len());
                let victims = [
                    first,
                    (first + 1 + dice.below(workers.len() - 1)) % workers.len(),
                ];
                for &victim in &victims {
                    workers[victim].kill();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                for &victim in &victims {
                    workers[victim] = worker(victim);
                }
            }
            Blow::Primary => {
                (primary, standby) = fail_over(primary, standby).await;
            }
        }
        dealt.push((blow, at.elapsed()));
    }
    eprintln!(
        "chaos: {} blows in {:.1} s: {dealt:?}; {accepted} chunks accepted meanwhile",
        dealt.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        dealt.len() >= 6,
        "the job ended after {} blows: too little chaos to mean anything",
        dealt.len()
    );
    assert!(
        dealt.iter().any(|(blow, _)| matches!(blow, Blow::Primary)),
        "the primary was never killed"
    );

    let finished = apis[1].wait_finished(job, Duration::from_secs(300)).await;
    assert_eq!(finished["state"], "done", "{finished} (seed {seed})");
    let results = apis[0].results(job).await;
    assert_eq!(
        primes_total(&results, CHUNKS, None),
        expected,
        "seed {seed}"
    );
    drop((masters, workers, primary, standby));
}
