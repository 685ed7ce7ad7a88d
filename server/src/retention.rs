//! Retention (`--retention-days`): the results of finished jobs do not stay for ever.
//!
//! A task wakes every [`RetentionPolicy::interval`] and deletes the results of jobs that
//! finished (done, failed or cancelled) longer ago than [`RetentionPolicy::max_age`]: their
//! replicas (outcomes of up to 1 MiB each) and their chunks (inputs and outputs). It works in
//! bounded steps ([`crate::store::Store::retention_step`]): one job at a time, at most
//! [`RetentionPolicy::batch_rows`] rows per statement, each statement a short transaction of its
//! own, and a pause as long as the step between steps, so it never holds long locks nor more than
//! half of the database's time (on the embedded database, its one connection).
//!
//! A job's results are first marked expired, with its replica counters kept on the job row:
//! from then on the job view shows `results_expired_at` and its counters as they were, and
//! `GET /api/v1/jobs/{id}/results` answers 410 `results_expired` ([`ensure_results_kept`]). The
//! job row stays. A job whose volunteers' credit is not settled yet is settled first (credit is
//! computed from the replicas). Backtracking no longer reopens an expired job's chunks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Error;
use crate::store::insights::Insights;
use crate::store::{JobView, RetentionStep, Store};

/// Default time between two retention passes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
/// Default rows deleted per statement.
pub const DEFAULT_BATCH_ROWS: i64 = 2_000;
/// Steps of one pass at most; the next pass goes on.
const MAX_STEPS_PER_PASS: usize = 100_000;

/// When results expire and how they are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Results of jobs finished longer ago than this are deleted.
    pub max_age: Duration,
    /// How often a pass runs (the first right after start-up).
    pub interval: Duration,
    /// Rows deleted per statement at most.
    pub batch_rows: i64,
}

impl RetentionPolicy {
    /// Keep results for `days` days (`--retention-days`).
    pub fn days(days: u32) -> RetentionPolicy {
        RetentionPolicy {
            max_age: Duration::from_secs(u64::from(days) * 86_400),
            interval: DEFAULT_INTERVAL,
            batch_rows: DEFAULT_BATCH_ROWS,
        }
    }
}

/// 410 `results_expired` for a job whose results the retention deleted.
pub fn ensure_results_kept(job: &JobView) -> Result<(), Error> {
    match job.results_expired_at {
        None => Ok(()),
        Some(at) => Err(Error::Gone {
            code: "results_expired",
            message: format!(
                "the results of job {} were deleted on {} under this master's retention \
                 (--retention-days); its counters remain in GET /api/v1/jobs/{}",
                job.id,
                at.format("%Y-%m-%d %H:%M UTC"),
                job.id
            ),
        }),
    }
}

/// Start the retention task; it stops when `stop` turns true.
pub fn spawn(
    policy: RetentionPolicy,
    store: Arc<dyn Store>,
    insights: Arc<dyn Insights>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(policy.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                result = pass(&policy, &*store, &*insights) => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "retention pass failed; retrying at the next one");
                    }
                }
                _ = stop.changed() => return,
            }
        }
    });
}

/// One pass: delete expired results step by step until none are left (or the pass's budget is
/// spent).
pub async fn pass(
    policy: &RetentionPolicy,
    store: &dyn Store,
    insights: &dyn Insights,
) -> Result<(), Error> {
    let max_age = chrono::Duration::from_std(policy.max_age).unwrap_or(chrono::Duration::MAX);
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(max_age)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let mut settled = false;
    for _ in 0..MAX_STEPS_PER_PASS {
        let started = tokio::time::Instant::now();
        match store
            .retention_step(cutoff, policy.batch_rows.max(1))
            .await?
        {
            RetentionStep::Idle => return Ok(()),
            RetentionStep::Unsettled { job } => {
                if settled {
                    tracing::warn!(job, "retention waits for the job's credit to be settled");
                    return Ok(());
                }
                // Reading credit settles the oldest finished jobs (store::insights).
                insights.credits().await?;
                settled = true;
            }
            RetentionStep::Expired { job } => {
                metrics::counter!("grid_retention_jobs_expired_total").increment(1);
                tracing::info!(job, "job results expired");
            }
            RetentionStep::Deleted { rows, .. } => {
                metrics::counter!("grid_retention_rows_deleted_total").increment(rows);
            }
            RetentionStep::Purged { job } => tracing::debug!(job, "job results deleted"),
        }
        // At most half of the database's time: as long a pause as the step took.
        tokio::time::sleep(started.elapsed().max(Duration::from_millis(1))).await;
    }
    Ok(())
}
