//! Retention (`--retention-days`): the results of finished jobs do not stay for ever
//! (review M1).
//!
//! A task runs a [`pass`] at start-up and then every [`RetentionPolicy::interval`]. A pass
//! deletes, job by job, the replicas and chunks (inputs, outputs, errors) of jobs that finished
//! (done, failed or cancelled) longer ago than [`RetentionPolicy::max_age`]. It works in
//! bounded steps ([`crate::store::Store::retention_step`]): each is one short transaction of
//! at most [`RetentionPolicy::batch_rows`] rows, followed by a pause as long as the step took,
//! so it never holds long locks nor more than about half of the database's time (on the
//! embedded database, its one connection).
//!
//! The first step of a job settles its volunteers' credit (`volunteer_credit`, the totals the
//! leaderboard reads, see [`crate::store::insights`]) if that was not done yet, and marks the
//! job `results_deleted_at`, in one transaction: credit never drops when the replicas go. From
//! then on `GET /api/v1/jobs/{id}/results` answers 410 `results_expired`
//! ([`ensure_results_kept`]); the job row and its counters stay, so its view is unchanged but
//! for that field. Spot-checks skip marked jobs, and backtracking no longer reopens them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::{JobView, RetentionStep, Store};

/// Time between two retention passes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
/// Rows deleted per step (one transaction) at most.
pub const DEFAULT_BATCH_ROWS: i64 = 2_000;
/// Jobs looked up per round of a pass.
const JOBS_PER_ROUND: i64 = 100;

/// When results expire and how they are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Results of jobs finished longer ago than this are deleted.
    pub max_age: Duration,
    /// How often a pass runs (the first right after start-up).
    pub interval: Duration,
    /// Rows deleted per step at most.
    pub batch_rows: i64,
}

impl RetentionPolicy {
    /// Keep results `days` days (`--retention-days`).
    pub fn days(days: u32) -> RetentionPolicy {
        RetentionPolicy {
            max_age: Duration::from_secs(u64::from(days) * 86_400),
            interval: DEFAULT_INTERVAL,
            batch_rows: DEFAULT_BATCH_ROWS,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Jobs whose results were deleted completely in this pass.
    pub jobs_purged: u64,
    /// Replica and chunk rows deleted.
    pub rows_deleted: u64,
}

/// 410 `results_expired` for a job whose results the retention deleted. The results route
/// calls it on the job it has looked up.
pub fn ensure_results_kept(job: &JobView) -> Result<()> {
    match job.results_deleted_at {
        None => Ok(()),
        Some(at) => Err(Error::Gone {
            code: "results_expired",
            message: format!(
                "the results of job {} were deleted on {} under this master's retention \
                 (--retention-days); the job and its counters remain at GET /api/v1/jobs/{}",
                job.id,
                at.format("%Y-%m-%d %H:%M UTC"),
                job.id
            ),
        }),
    }
}

/// Start the retention task; it stops when `stop` turns true.
pub fn spawn(policy: RetentionPolicy, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(policy.interval.max(Duration::from_millis(10)));
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
                outcome = pass(&*store, &policy) => match outcome {
                    Ok(report) if report.rows_deleted > 0 || report.jobs_purged > 0 => {
                        tracing::info!(jobs = report.jobs_purged, rows = report.rows_deleted,
                            "retention deleted the results of old jobs");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "retention pass failed; the next one goes on");
                    }
                },
                _ = stop.changed() => return,
            }
        }
    });
}

/// One pass: delete the results of every job finished before `now - max_age`, step by step.
pub async fn pass(store: &dyn Store, policy: &RetentionPolicy) -> Result<PassReport> {
    let cutoff = cutoff(policy.max_age);
    let mut report = PassReport::default();
    loop {
        let jobs = store.retention_candidates(cutoff, JOBS_PER_ROUND).await?;
        if jobs.is_empty() {
            return Ok(report);
        }
        let mut progressed = false;
        for job in jobs {
            loop {
                let started = tokio::time::Instant::now();
                let step = store
                    .retention_step(job, cutoff, policy.batch_rows.max(1))
                    .await?;
                match step {
                    RetentionStep::Skipped => break,
                    RetentionStep::Marked => {
                        tracing::debug!(job, "job results marked for deletion");
                        progressed = true;
                    }
                    RetentionStep::Deleted(rows) => {
                        ::metrics::counter!("grid_retention_rows_deleted_total").increment(rows);
                        report.rows_deleted += rows;
                        progressed = true;
                    }
                    RetentionStep::Purged => {
                        ::metrics::counter!("grid_retention_jobs_purged_total").increment(1);
                        report.jobs_purged += 1;
                        progressed = true;
                        break;
                    }
                }
                // At most about half of the database's time: pause as long as the step took.
                tokio::time::sleep(started.elapsed().max(Duration::from_millis(1))).await;
            }
        }
        if !progressed {
            // Every candidate was skipped (e.g. reopened meanwhile): nothing more this pass.
            return Ok(report);
        }
    }
}

/// The finish time before which results expire.
fn cutoff(max_age: Duration) -> DateTime<Utc> {
    let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    Utc::now()
        .checked_sub_signed(max_age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}
