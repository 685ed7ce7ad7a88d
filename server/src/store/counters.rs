//! The replica counters kept on each `jobs` row (`replicas_issued`, `_returned`, `_invalid`,
//! `_expired`; spot-check ringers not counted), so a job view reads one row instead of
//! counting the job's replicas (finding M3 of the security review).
//!
//! Every statement of a commit that changes a replica's state or verdict reports what it
//! changed into a [`ReplicaTally`], and the commit adds the tally to the jobs rows once, in
//! its last statement (job ids in order, so concurrent masters lock jobs rows in one order).
//! The chunk counters (`chunks_done`, `_failed`, `_revised`) are kept by the review
//! ([`crate::trust::review`]) as before. [`RECOUNT_SQL`] recounts from the replicas (the migration's
//! backfill and the tests' check).

use std::collections::BTreeMap;

use grid_protocol::states::{ReplicaState, Verdict};

/// Changes to one job's replica counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaDelta {
    /// Leases created.
    pub issued: i64,
    /// Results recorded.
    pub returned: i64,
    /// Invalid verdicts set (positive) or withdrawn (negative).
    pub invalid: i64,
    /// Leases expired.
    pub expired: i64,
}

/// [`ReplicaTally::columns`]: job ids, then the issued, returned, invalid and expired deltas.
pub type TallyColumns = (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>);

/// What one commit changed, per job.
#[derive(Debug, Default)]
pub struct ReplicaTally(BTreeMap<i64, ReplicaDelta>);

impl ReplicaTally {
    fn entry(&mut self, job: i64) -> &mut ReplicaDelta {
        self.0.entry(job).or_default()
    }

    /// A lease was created (ringers are not counted).
    pub fn issued(&mut self, job: i64, ringer: bool) {
        if !ringer {
            self.entry(job).issued += 1;
        }
    }

    /// A result was recorded.
    pub fn returned(&mut self, job: i64, ringer: bool) {
        if !ringer {
            self.entry(job).returned += 1;
        }
    }

    /// A lease ended in `state` (only `expired` is counted).
    pub fn ended(&mut self, job: i64, ringer: bool, state: ReplicaState) {
        if !ringer && state == ReplicaState::Expired {
            self.entry(job).expired += 1;
        }
    }

    /// A verdict changed from `was` to `now`.
    pub fn verdict(&mut self, job: i64, ringer: bool, was: Option<Verdict>, now: Option<Verdict>) {
        let invalid = |verdict: Option<Verdict>| i64::from(verdict == Some(Verdict::Invalid));
        let change = invalid(now) - invalid(was);
        if !ringer && change != 0 {
            self.entry(job).invalid += change;
        }
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|d| *d == ReplicaDelta::default())
    }

    /// The non-zero deltas, by job id in order.
    pub fn deltas(&self) -> impl Iterator<Item = (i64, ReplicaDelta)> + '_ {
        self.0
            .iter()
            .filter(|(_, d)| **d != ReplicaDelta::default())
            .map(|(job, d)| (*job, *d))
    }

    /// `(ids, issued, returned, invalid, expired)` columns for a set-based update.
    pub fn columns(&self) -> TallyColumns {
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (job, d) in self.deltas() {
            columns.0.push(job);
            columns.1.push(d.issued);
            columns.2.push(d.returned);
            columns.3.push(d.invalid);
            columns.4.push(d.expired);
        }
        columns
    }
}

/// The replica counters of job `$1` recounted from its replicas: `(issued, returned,
/// invalid, expired)`; portable.
pub const RECOUNT_SQL: &str = "
    SELECT count(*),
           COALESCE(SUM(CASE WHEN state = 'returned' THEN 1 ELSE 0 END), 0),
           COALESCE(SUM(CASE WHEN verdict = 'invalid' THEN 1 ELSE 0 END), 0),
           COALESCE(SUM(CASE WHEN state = 'expired' THEN 1 ELSE 0 END), 0)
    FROM replicas WHERE job_id = $1 AND NOT ringer";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringers_are_not_counted_and_verdicts_count_their_change() {
        let mut tally = ReplicaTally::default();
        tally.issued(1, true);
        tally.returned(1, true);
        assert!(tally.is_empty());
        tally.issued(2, false);
        tally.ended(2, false, ReplicaState::Revoked);
        tally.ended(2, false, ReplicaState::Expired);
        tally.verdict(2, false, None, Some(Verdict::Invalid));
        tally.verdict(2, false, Some(Verdict::Invalid), Some(Verdict::Valid));
        tally.verdict(2, false, Some(Verdict::Invalid), None);
        tally.verdict(2, false, Some(Verdict::Valid), Some(Verdict::Valid));
        assert_eq!(
            tally.deltas().collect::<Vec<_>>(),
            vec![(
                2,
                ReplicaDelta {
                    issued: 1,
                    returned: 0,
                    invalid: -1,
                    expired: 1
                }
            )]
        );
    }
}
