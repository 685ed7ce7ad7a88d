//! `grid-loadgen`: one process simulating many grid workers against a master, each over its
//! own real WebSocket session with its own identity, honest or lying. It measures what the
//! workers see: results per second, assignment latency, connection errors, and how busy the
//! slots were (with a simulated compute time per chunk).
//!
//! # Layout
//!
//! - [`run`] (this file): start the simulated workers, watch the stop condition, print
//!   progress, and gather the [`Report`].
//! - [`config`]: [`LoadConfig`] (what a run does) and [`config::Args`] (the command line).
//! - `session`: one simulated worker: the reconnect loop and the protocol (hello, welcome,
//!   assignments, results, releases, heartbeats, revokes), one task per connection.
//! - [`sabotage`]: how saboteurs lie ([`Sabotage`]: random, colluding, sleeper,
//!   intermittent, forged) and which workers do.
//! - [`adversary`]: what saboteurs do besides lying ([`Attack`]: sybil, rotate, release, drop,
//!   hoard), the sybils' connection order, and which local address each worker connects from.
//! - [`stats`]: shared counters and latency histograms, and the [`Report`] (with the honest
//!   and the attacking side's counts apart).
//!
//! What it is not: a worker to volunteer with (that is `grid-worker`), or a benchmark by
//! itself (the scripts under `bench/` submit jobs, run it and read the master's figures).

pub mod adversary;
pub mod config;
pub mod sabotage;
mod session;
pub mod stats;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use adversary::Attack;
pub use config::{LoadConfig, StopWhen};
pub use sabotage::Sabotage;
pub use stats::Report;

use adversary::Turns;
use sabotage::choose_saboteurs;
use session::{Shared, SimulatedWorker};
use stats::Stats;

/// How often the stop condition is checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How long simulated workers get to close their sessions once the run stops.
const WIND_DOWN: Duration = Duration::from_secs(10);

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Invalid settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The master refused our protocol version.
    #[error("the master refused the protocol: {0}")]
    Refused(String),
}

/// Simulate `config.workers` workers until the stop condition of `config.stop` is met or
/// `shutdown` completes, then close every session and report.
pub async fn run(
    config: LoadConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, LoadError> {
    config.validate()?;
    let tls = Arc::new(
        grid_protocol::tls::client_config(config.ca_cert.as_deref()).map_err(LoadError::Config)?,
    );
    let shared = Arc::new(Shared {
        tls,
        stats: Stats::new(!config.compute.is_zero()),
        gate: Semaphore::new(config.connect_concurrency),
        fatal: OnceLock::new(),
        turns: (config.attack == Some(Attack::Sybil)).then(|| Turns::new(config.saboteurs)),
        config,
    });
    let config = &shared.config;
    let (stop_tx, stop_rx) = watch::channel(false);
    let saboteurs = choose_saboteurs(config.workers, config.saboteurs, config.seed);
    let mut workers = JoinSet::new();
    // Each side counts its own workers, for source addresses and the sybils' order.
    let (mut honest, mut attackers) = (0, 0);
    for index in 0..config.workers {
        let shared = Arc::clone(&shared);
        let worker = if saboteurs.binary_search(&index).is_ok() {
            attackers += 1;
            SimulatedWorker::attacker(shared, index, attackers - 1)
        } else {
            honest += 1;
            SimulatedWorker::honest(shared, index, honest - 1)
        };
        workers.spawn(worker.run(stop_rx.clone()));
    }

    tokio::select! {
        () = shutdown => {}
        () = stop_condition(&shared) => {}
    }
    let elapsed = shared.stats.start.elapsed();
    let _ = stop_tx.send(true);
    let wind_down = async { while workers.join_next().await.is_some() {} };
    if tokio::time::timeout(WIND_DOWN, wind_down).await.is_err() {
        workers.abort_all();
    }
    if let Some(refusal) = shared.fatal.get() {
        return Err(LoadError::Refused(refusal.clone()));
    }
    Ok(shared.stats.report(&shared.config, elapsed))
}

/// Resolves when the run should stop: its duration is over, the work ran dry, or the master
/// refused us. Prints progress meanwhile when asked to.
async fn stop_condition(shared: &Shared) {
    let stats = &shared.stats;
    let config = &shared.config;
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    let mut progress = Progress::new(config.progress);
    loop {
        watch.tick().await;
        let now = Instant::now();
        progress.maybe_print(stats, now);
        if shared.fatal.get().is_some() {
            return;
        }
        match config.stop {
            StopWhen::Shutdown => {}
            StopWhen::After(duration) => {
                if now.duration_since(stats.start) >= duration {
                    return;
                }
            }
            StopWhen::Idle(quiet) => {
                let had_work = stats.assignments() > 0;
                let held = stats.held.load(Ordering::Relaxed);
                let last = Duration::from_micros(stats.last_activity_us.load(Ordering::Relaxed));
                let since_last = now.duration_since(stats.start).saturating_sub(last);
                if had_work && held <= 0 && since_last >= quiet {
                    return;
                }
            }
        }
    }
}

/// The periodic progress line on stderr.
struct Progress {
    every: Option<Duration>,
    last_at: Instant,
    last_results: u64,
}

impl Progress {
    fn new(every: Option<Duration>) -> Self {
        Progress {
            every,
            last_at: Instant::now(),
            last_results: 0,
        }
    }

    fn maybe_print(&mut self, stats: &Stats, now: Instant) {
        let Some(every) = self.every else {
            return;
        };
        let since = now.duration_since(self.last_at);
        if since < every {
            return;
        }
        let results = stats.results();
        eprintln!(
            "[{:7.1} s] connected {:>6}  held {:>6}  assignments {:>9}  results {:>9}  ({:.0}/s)",
            now.duration_since(stats.start).as_secs_f64(),
            stats.connected.load(Ordering::Relaxed),
            stats.held.load(Ordering::Relaxed),
            stats.assignments(),
            results,
            (results - self.last_results) as f64 / since.as_secs_f64(),
        );
        self.last_at = now;
        self.last_results = results;
    }
}
