//! The dashboard's live figures: one sampler per master, shared by every open dashboard.
//!
//! - [`Feed`]: started by the first dashboard that subscribes, it samples once a second
//!   ([`SAMPLE_INTERVAL`]) and keeps the last ten minutes ([`HISTORY_LEN`]) so a dashboard
//!   opened later draws its plot at once. It stops by itself a minute after the last dashboard
//!   closed, and when the master shuts down.
//! - A [`Sample`] holds results per second and open worker sessions by kind, read from this
//!   master's Prometheus counters (see [`crate::metrics`]), and chunks decided per second and
//!   chunks by state, read from the jobs' counters in the database. So with several masters on
//!   one database, results/s and workers are this master's, the chunk figures the whole grid's.
//! - Credit ([`Feed::credits`]) is computed by one query over the valid replicas
//!   ([`crate::store::insights::Insights::credits`]) and cached (for [`CREDIT_TTL`], or
//!   [`CREDIT_FRESH`] once chunks were decided since): the leaderboard and the volunteers' own
//!   figures read the cache, so it costs one query a second at most however many watch.
//!
//! Reading the scheduler's state directly would need a channel out of the scheduler; polling
//! counters keeps the two apart and works the same on every master.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use grid_protocol::states::ChunkState;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::Result;
use crate::store::Store;
use crate::store::insights::{Credit, Insights};

/// How often the sampler samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: ten minutes.
pub const HISTORY_LEN: usize = 600;
/// Ticks without any dashboard before the sampler stops.
const IDLE_TICKS: u32 = 60;
/// How long computed credit is reused at most.
pub const CREDIT_TTL: Duration = Duration::from_secs(5);
/// How long computed credit is reused even when chunks were decided since.
pub const CREDIT_FRESH: Duration = Duration::from_secs(1);

/// Open worker sessions by kind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct WorkerCounts {
    /// Browser tabs (one session per thread).
    pub browser: u64,
    /// Native `grid-worker` processes.
    pub native: u64,
}

/// Chunks by state, over every job.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ChunkTotals {
    /// Not yet decided, in queued or running jobs.
    pub open: i64,
    /// Accepted.
    pub done: i64,
    /// Failed.
    pub failed: i64,
    /// Never decided because their job was cancelled.
    pub cancelled: i64,
}

/// One second of the grid.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Sample {
    /// When it was taken, Unix time in milliseconds.
    pub time_ms: i64,
    /// Results received by this master per second since the previous sample.
    pub results_per_second: f64,
    /// Chunks decided (accepted or failed) per second over the whole grid.
    pub chunks_per_second: f64,
    /// Worker sessions open on this master.
    pub workers: WorkerCounts,
    /// Chunks by state over the whole grid.
    pub chunks: ChunkTotals,
}

/// Credit as last computed.
#[derive(Debug)]
struct CachedCredits {
    at: Instant,
    decided: i64,
    credits: Arc<Vec<Credit>>,
    /// How long computing it took: the cache is kept at least ten times that long, so credit
    /// never takes more than a tenth of the database's time however large the grid grows.
    cost: Duration,
}

impl CachedCredits {
    fn fresh_for(&self) -> Duration {
        CREDIT_FRESH.max(self.cost * 10)
    }

    fn live_for(&self) -> Duration {
        CREDIT_TTL.max(self.cost * 10)
    }
}

/// The shared sampler; cheap to clone.
#[derive(Debug, Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    insights: Arc<dyn Insights>,
    /// The latest sample; dashboards wait on it.
    latest: watch::Sender<Option<Arc<Sample>>>,
    /// The last [`HISTORY_LEN`] samples, oldest first.
    history: Mutex<VecDeque<Sample>>,
    /// Whether the sampler task runs.
    running: AtomicBool,
    /// The master's shutdown signal.
    shutdown: watch::Receiver<bool>,
    /// Credit of every volunteer, when it was computed and the chunks decided then.
    credits: tokio::sync::Mutex<Option<CachedCredits>>,
}

impl Feed {
    /// A feed over this master's store; nothing runs until [`Feed::subscribe`].
    pub fn new(
        store: Arc<dyn Store>,
        insights: Arc<dyn Insights>,
        shutdown: watch::Receiver<bool>,
    ) -> Feed {
        Feed {
            inner: Arc::new(Inner {
                store,
                insights,
                latest: watch::channel(None).0,
                history: Mutex::new(VecDeque::with_capacity(HISTORY_LEN)),
                running: AtomicBool::new(false),
                shutdown,
                credits: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Receive every new sample (starting the sampler if it is not running).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Sample>>> {
        let receiver = self.inner.latest.subscribe();
        self.start();
        receiver
    }

    /// The samples of the last ten minutes, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.inner
            .history
            .lock()
            .map(|history| history.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn start(&self) {
        if self
            .inner
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tokio::spawn(sample_loop(Arc::clone(&self.inner)));
        }
    }

    /// Every volunteer's credit, highest first: recomputed when older than [`CREDIT_TTL`], or
    /// older than [`CREDIT_FRESH`] and chunks were decided since (both stretched to ten times
    /// what the last computation took).
    pub async fn credits(&self) -> Result<Arc<Vec<Credit>>> {
        let mut cached = self.inner.credits.lock().await;
        let decided = if cached
            .as_ref()
            .is_some_and(|c| c.at.elapsed() < c.fresh_for())
        {
            None
        } else {
            Some(decided_total(self.inner.store.as_ref()).await?)
        };
        if let Some(cache) = cached.as_ref()
            && cache.at.elapsed() < cache.live_for()
            && decided.is_none_or(|decided| decided == cache.decided)
        {
            return Ok(Arc::clone(&cache.credits));
        }
        let decided = match decided {
            Some(decided) => decided,
            None => decided_total(self.inner.store.as_ref()).await?,
        };
        let started = Instant::now();
        let credits = Arc::new(self.inner.insights.credits().await?);
        *cached = Some(CachedCredits {
            at: Instant::now(),
            decided,
            credits: Arc::clone(&credits),
            cost: started.elapsed(),
        });
        Ok(credits)
    }

    /// A volunteer changed its display name: update its entry in the cached credit, if it has
    /// one. Recomputing all credit instead would let anyone make the master do its most
    /// expensive query at will (review H6).
    pub async fn rename(&self, worker_id: &str, display_name: Option<&str>) {
        let mut cached = self.inner.credits.lock().await;
        let Some(cache) = cached.as_mut() else {
            return;
        };
        if let Some(place) = cache.credits.iter().position(|c| c.worker_id == worker_id) {
            let mut credits = (*cache.credits).clone();
            credits[place].display_name = display_name.map(str::to_owned);
            cache.credits = Arc::new(credits);
        }
    }
}

/// What the counters said at the previous tick.
struct Reading {
    at: Instant,
    results_total: f64,
    decided_total: i64,
}

async fn sample_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.clone();
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut previous: Option<Reading> = None;
    let mut idle = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        }
        if inner.latest.receiver_count() == 0 {
            idle += 1;
            if idle >= IDLE_TICKS {
                inner.running.store(false, Ordering::Release);
                // A dashboard may have subscribed in between and seen the sampler running.
                if inner.latest.receiver_count() == 0
                    || inner
                        .running
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                {
                    return;
                }
                idle = 0;
            }
        } else {
            idle = 0;
        }
        match take_sample(&inner, previous.as_ref()).await {
            Ok((sample, reading)) => {
                previous = Some(reading);
                if let Some(sample) = sample {
                    if let Ok(mut history) = inner.history.lock() {
                        if history.len() == HISTORY_LEN {
                            history.pop_front();
                        }
                        history.push_back(sample.clone());
                    }
                    inner.latest.send_replace(Some(Arc::new(sample)));
                }
            }
            Err(error) => tracing::warn!(%error, "dashboard sample failed"),
        }
    }
    inner.running.store(false, Ordering::Release);
}

/// Chunks accepted or failed over every job (may go down when chunks are revised).
async fn decided_total(store: &dyn Store) -> Result<i64> {
    Ok(store
        .chunk_states()
        .await?
        .iter()
        .filter(|(state, _)| state.is_decided())
        .map(|(_, count)| count)
        .sum())
}

/// Read the counters; a sample once there is a previous reading to take rates against.
async fn take_sample(
    inner: &Inner,
    previous: Option<&Reading>,
) -> Result<(Option<Sample>, Reading)> {
    let mut chunks = ChunkTotals::default();
    for (state, count) in inner.store.chunk_states().await? {
        match state {
            ChunkState::Open => chunks.open = count,
            ChunkState::Done => chunks.done = count,
            ChunkState::Failed => chunks.failed = count,
            ChunkState::Cancelled => chunks.cancelled = count,
        }
    }
    let rendered = crate::metrics::install()
        .map(|handle| handle.render())
        .unwrap_or_default();
    let counters = PrometheusFigures::parse(&rendered);
    let reading = Reading {
        at: Instant::now(),
        results_total: counters.results_total,
        decided_total: chunks.done + chunks.failed,
    };
    let sample = previous.map(|previous| {
        let seconds = reading
            .at
            .duration_since(previous.at)
            .as_secs_f64()
            .max(1e-3);
        // Counters only grow, but a revision (backtracking) takes chunks back from `done`.
        let results = (reading.results_total - previous.results_total).max(0.0);
        let decided = (reading.decided_total - previous.decided_total).max(0) as f64;
        Sample {
            time_ms: Utc::now().timestamp_millis(),
            results_per_second: round2(results / seconds),
            chunks_per_second: round2(decided / seconds),
            workers: counters.workers,
            chunks,
        }
    });
    Ok((sample, reading))
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The few figures the dashboard reads from this master's Prometheus exposition.
#[derive(Debug, Default, PartialEq)]
struct PrometheusFigures {
    results_total: f64,
    workers: WorkerCounts,
}

impl PrometheusFigures {
    fn parse(text: &str) -> PrometheusFigures {
        let mut figures = PrometheusFigures::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let count = if value.is_finite() && value > 0.0 {
                value.round() as u64
            } else {
                0
            };
            match name.trim() {
                "grid_results_total" => figures.results_total = value,
                r#"grid_workers_connected{kind="browser"}"# => figures.workers.browser = count,
                r#"grid_workers_connected{kind="native"}"# => figures.workers.native = count,
                _ => {}
            }
        }
        figures
    }
}

/// The public name of a worker identity: the identity itself stays private, because knowing
/// it is what lets a volunteer set its display name.
pub fn pseudonym(worker_id: &str) -> String {
    let digest = Sha256::digest(format!("grid volunteer {worker_id}").as_bytes());
    format!("volunteer-{}", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_the_exposition() {
        let text = "# HELP grid_results_total Results recorded.\n\
                    # TYPE grid_results_total counter\n\
                    grid_results_total 1234\n\
                    grid_results_rejected_total 3\n\
                    grid_workers_connected{kind=\"browser\"} 4\n\
                    grid_workers_connected{kind=\"native\"} 2\n\
                    grid_db_commit_seconds_bucket{le=\"0.001\"} 7\n";
        assert_eq!(
            PrometheusFigures::parse(text),
            PrometheusFigures {
                results_total: 1234.0,
                workers: WorkerCounts {
                    browser: 4,
                    native: 2
                },
            }
        );
        assert_eq!(PrometheusFigures::parse(""), PrometheusFigures::default());
        // A gauge that went below zero (it never should) reads as none.
        let negative = "grid_workers_connected{kind=\"native\"} -1\n";
        assert_eq!(PrometheusFigures::parse(negative).workers.native, 0);
    }

    #[test]
    fn pseudonyms_are_stable_and_do_not_reveal_the_identity() {
        let a = pseudonym("browser-0123456789abcdef");
        assert_eq!(a, pseudonym("browser-0123456789abcdef"));
        assert_ne!(a, pseudonym("browser-0123456789abcdee"));
        assert!(a.starts_with("volunteer-") && a.len() == "volunteer-".len() + 8);
        assert!(!a.contains("0123456789abcdef"));
    }
}
