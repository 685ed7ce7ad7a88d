//! The master's own spot-checks: accepted chunks of built-in kernels, computed again by the
//! master itself.
//!
//! Trust must come from answers the grid knows independently of any worker (docs/trust.md):
//! identities agreeing with each other prove nothing when one party can make them all. The
//! master runs the very kernels the workers run, so for kernel jobs it can know an answer
//! itself. This task takes the most recently accepted chunks it has not checked, computes them
//! within a small CPU budget, and tells the scheduler whether each accepted output is right:
//! - agreed: the chunk becomes a spot-check ringer whose answer is known (passing one builds
//!   a worker's trust; failing one is a proven lie);
//! - disagreed: every worker that returned the accepted output lied; they are blacklisted and
//!   what their word accepted is reopened (see [`crate::trust::review::reconcile`]).
//!
//! Module jobs are never run by the master: their chunks are verified by quorums only.

use std::time::{Duration, Instant};

use grid_protocol::{Outcome, outcome_digest};
use tokio::sync::watch;

use crate::scheduler::{Event, SchedulerHandle};
use crate::store::{MasterCheckCandidate, Store};
use crate::trust::review::MasterCheck;

/// Pause between two rounds of checks.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Chunks loaded per round (cheap kernels such as echo check all of them: up to 2,048 a
/// second, enough to follow a grid accepting thousands of chunks a second).
const CANDIDATES_PER_ROUND: i64 = 512;
/// CPU time one round may spend computing: at most a tenth of one core.
const COMPUTE_BUDGET: Duration = Duration::from_millis(25);

/// Run the checker until `stop` flips to true.
pub fn spawn(
    store: std::sync::Arc<dyn Store>,
    scheduler: SchedulerHandle,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let candidates = match store.master_check_candidates(CANDIDATES_PER_ROUND).await {
                Ok(candidates) if !candidates.is_empty() => candidates,
                Ok(_) => continue,
                Err(error) => {
                    tracing::debug!(%error, "could not load chunks to check");
                    continue;
                }
            };
            let Ok(checks) = tokio::task::spawn_blocking(move || check(candidates)).await else {
                continue;
            };
            if checks.is_empty() {
                continue;
            }
            let refuted = checks.iter().filter(|check| !check.agreed).count();
            metrics::counter!("grid_master_checks_total").increment(checks.len() as u64);
            if refuted > 0 {
                tracing::warn!(refuted, "the master computed accepted chunks differently");
            }
            if !scheduler.send(Event::MasterChecked { checks }).await {
                return;
            }
        }
    })
}

/// Compute candidates until the budget is spent.
pub fn check(candidates: Vec<MasterCheckCandidate>) -> Vec<MasterCheck> {
    let started = Instant::now();
    let mut checks = Vec::new();
    for candidate in candidates {
        if started.elapsed() >= COMPUTE_BUDGET {
            break;
        }
        let Ok(input) = serde_json::from_str::<serde_json::Value>(&candidate.input) else {
            continue;
        };
        let outcome = match grid_kernels::run(&candidate.kernel, &input) {
            Ok(output) => Outcome::Ok(output),
            Err(error) => Outcome::Err(error.to_string()),
        };
        let digest = outcome_digest(&outcome);
        checks.push(MasterCheck {
            chunk: candidate.chunk,
            digest,
            agreed: digest == candidate.output_digest,
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn candidate(
        idx: i32,
        input: serde_json::Value,
        output: serde_json::Value,
    ) -> MasterCheckCandidate {
        MasterCheckCandidate {
            chunk: (1, idx),
            kernel: "echo".into(),
            input: grid_protocol::canonical_json(&input),
            output_digest: outcome_digest(&Outcome::Ok(output)),
        }
    }

    #[test]
    fn right_outputs_agree_and_forged_ones_do_not() {
        let checks = check(vec![
            candidate(0, json!({"n": 1}), json!({"n": 1})),
            candidate(1, json!({"n": 2}), json!({"pwned": true})),
        ]);
        let verdicts: Vec<_> = checks.iter().map(|c| (c.chunk, c.agreed)).collect();
        assert_eq!(verdicts, vec![((1, 0), true), ((1, 1), false)]);
        assert_eq!(
            checks[1].digest,
            outcome_digest(&Outcome::Ok(json!({"n": 2}))),
            "the master's own answer comes with the verdict"
        );
    }
}
