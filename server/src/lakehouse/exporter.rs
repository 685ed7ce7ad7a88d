//! The export task: every master runs one. It claims the export of a finished job (done or
//! failed) that named a sink ([`Store::claim_export`]: one master at a time, a dead master's
//! claim taken over once its heartbeat is stale), runs it ([`delta::export_job`]) and records
//! the outcome. A failed attempt is retried after a back-off of 1, 2, 4 and 8 seconds; the
//! fifth failure marks the export `failed` with its reason, which the job view shows.
//! Cancelled jobs are not exported (their export reads `skipped`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{SinkPolicy, delta};
use crate::store::{ExportClaim, Store};

/// How often an idle exporter looks for finished jobs.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The back-off after failed attempt number `attempt` (from 1).
pub fn backoff(attempt: i32) -> Duration {
    Duration::from_secs(1u64 << attempt.clamp(1, 6).saturating_sub(1))
}

/// Start the export task of this master (`master_id`); it ends when `stop` turns true.
pub fn spawn(
    store: Arc<dyn Store>,
    policy: Arc<SinkPolicy>,
    master_id: Arc<str>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                return;
            }
            let claimed = match store.claim_export(&master_id).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(?error, "cannot look for exports");
                    None
                }
            };
            match claimed {
                // Another may be due at once.
                Some(claim) => tokio::select! {
                    () = run(&store, &policy, &master_id, claim) => {}
                    _ = stop.changed() => return,
                },
                None => tokio::select! {
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                    _ = stop.changed() => {}
                },
            }
        }
    })
}

/// One attempt at a claimed export, and its record.
async fn run(store: &Arc<dyn Store>, policy: &SinkPolicy, master_id: &str, claim: ExportClaim) {
    let started = std::time::Instant::now();
    let job = claim.job_id;
    match delta::export_job(store.clone(), policy, job, &claim.sink).await {
        Ok(exported) => {
            tracing::info!(
                job,
                sink = %claim.sink,
                rows = exported.rows,
                table_version = exported.table_version,
                already = exported.already,
                seconds = started.elapsed().as_secs_f64(),
                "results exported"
            );
            ::metrics::counter!("grid_exports_total", "outcome" => "done").increment(1);
            if let Err(error) = store.export_done(job, exported.table_version).await {
                // The table holds the job: handing the claim back lets the next attempt find
                // its transaction and record it.
                tracing::warn!(?error, job, "cannot record an export");
                let _ = store
                    .export_failed(job, master_id, "recording the export failed", backoff(1))
                    .await;
            }
        }
        Err(error) => {
            let reason = format!("{error:#}");
            tracing::warn!(job, sink = %claim.sink, attempt = claim.attempt, %reason, "export failed");
            ::metrics::counter!("grid_exports_total", "outcome" => "failed").increment(1);
            if let Err(error) = store
                .export_failed(job, master_id, &reason, backoff(claim.attempt))
                .await
            {
                tracing::warn!(?error, job, "cannot record a failed export");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn retries_back_off_exponentially() {
        let waits: Vec<Duration> = (1..=5).map(backoff).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16].map(Duration::from_secs).to_vec(),
            "seconds after attempts 1..5"
        );
    }
}
