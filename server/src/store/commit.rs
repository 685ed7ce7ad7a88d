//! One batch committed, written once for every backend: the order of the steps, what each
//! step hands to the next, and the bookkeeping of the outcome and the replica counters. Each
//! backend implements [`CommitTx`] on its open transaction (set-based statements over arrays
//! on PostgreSQL, a statement per row on SQLite); the same value is the trust review's port
//! ([`ReviewDb`]), so [`review::reconcile`] runs inside the commit.
//!
//! The steps, in order:
//! 1. the workers seen are upserted;
//! 2. results are stored for leases that are live and held by their sender (others refused);
//! 3. leases ended without a result (gone, released, master left) are closed;
//! 4. the expiry sweep closes overdue leases (and those of dead masters);
//! 5. every chunk those steps touched is reviewed (verdicts, decisions, trust);
//! 6. leases are created: each chunk's wanted replicas are claimed first, then the leases
//!    inserted; a lease the independence constraints refuse (its worker or network holds the
//!    chunk already) sends its chunk back to review, which wants the replica again;
//! 7. the replica counters on the jobs rows take this commit's changes.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use grid_protocol::states::ReplicaState;

use super::counters::ReplicaTally;
use super::{Batch, BatchOutcome, CreatedLease, ExpirySweep, LeaseEnd, LeaseRequest};
use super::{ResultSubmission, review};
use crate::store::Result;
use crate::trust::review::{ChunkKey, ReviewDb};

/// A replica a step changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedReplica {
    /// Its lease id.
    pub lease: i64,
    /// Its chunk.
    pub chunk: ChunkKey,
    /// A spot-check (not counted on its job).
    pub ringer: bool,
    /// The state it was left in.
    pub state: ReplicaState,
}

/// A backend's open transaction, as a commit needs it.
#[async_trait]
pub trait CommitTx: ReviewDb {
    /// This commit's replica counter changes (the review adds to them too).
    fn tally(&mut self) -> &mut ReplicaTally;

    /// Upsert the workers seen (identity, kind, last seen).
    async fn record_workers(&mut self, seen: &[(std::sync::Arc<str>, &'static str)]) -> Result<()>;

    /// Store the results whose lease is live and held by their sender; returns those stored.
    async fn record_results(&mut self, results: &[ResultSubmission])
    -> Result<Vec<ChangedReplica>>;

    /// Close live leases that ended without a result; returns those closed.
    async fn end_leases(&mut self, ended: &[(i64, LeaseEnd)]) -> Result<Vec<ChangedReplica>>;

    /// Close overdue leases (`expired`) and those of dead masters (`revoked`), heartbeating
    /// `master_id`; returns those closed.
    async fn sweep_expired(
        &mut self,
        sweep: ExpirySweep,
        master_id: &str,
    ) -> Result<Vec<ChangedReplica>>;

    /// Take `n` wanted replicas from each open chunk that still wants that many; returns the
    /// chunks claimed.
    async fn claim_replicas(
        &mut self,
        wanted: &BTreeMap<ChunkKey, i32>,
    ) -> Result<BTreeSet<ChunkKey>>;

    /// Insert leases stamped with `master_id`; for each request, its new lease id, or `None`
    /// when a constraint refused it (or its ringer's chunk is gone).
    async fn insert_leases(
        &mut self,
        requests: &[&LeaseRequest],
        master_id: &str,
    ) -> Result<Vec<Option<i64>>>;

    /// Mark queued jobs running (their first lease was issued).
    async fn mark_started(&mut self, jobs: &BTreeSet<i64>) -> Result<()>;

    /// Add [`CommitTx::tally`] to the jobs rows.
    async fn count_replicas(&mut self) -> Result<()>;
}

/// Commit `batch` through `tx` (whose transaction the caller begins and commits).
pub async fn commit_batch<T: CommitTx>(tx: &mut T, batch: &Batch) -> Result<BatchOutcome> {
    let mut outcome = BatchOutcome::default();
    let mut touched: BTreeSet<ChunkKey> = BTreeSet::new();

    if !batch.workers_seen.is_empty() {
        tx.record_workers(&batch.workers_seen).await?;
    }
    if !batch.results.is_empty() {
        let stored = tx.record_results(&batch.results).await?;
        let stored_leases: BTreeSet<i64> = stored.iter().map(|r| r.lease).collect();
        for replica in stored {
            tx.tally().returned(replica.chunk.0, replica.ringer);
            touched.insert(replica.chunk);
        }
        for result in &batch.results {
            if stored_leases.contains(&result.lease) {
                outcome.recorded.push(result.lease);
            } else {
                outcome.refused.push(result.lease);
            }
        }
    }
    if !batch.ended.is_empty() {
        for replica in tx.end_leases(&batch.ended).await? {
            tx.tally()
                .ended(replica.chunk.0, replica.ringer, replica.state);
            touched.insert(replica.chunk);
        }
    }
    if batch.sweep != ExpirySweep::None {
        for replica in tx.sweep_expired(batch.sweep, &batch.master_id).await? {
            outcome.expired.push(replica.lease);
            tx.tally()
                .ended(replica.chunk.0, replica.ringer, replica.state);
            touched.insert(replica.chunk);
        }
    }
    if !touched.is_empty() || !batch.master_checks.is_empty() {
        review::reconcile(
            tx,
            &touched,
            &batch.master_checks,
            &mut outcome,
            batch.trust_off,
        )
        .await?;
    }
    create_leases(tx, batch, &mut outcome).await?;
    tx.count_replicas().await?;
    Ok(outcome)
}

/// Step 6: claims, inserts, and the review of chunks whose lease was refused.
async fn create_leases<T: CommitTx>(
    tx: &mut T,
    batch: &Batch,
    outcome: &mut BatchOutcome,
) -> Result<()> {
    if batch.leases.is_empty() {
        return Ok(());
    }
    // Ringers need no claim: their chunk is already accepted.
    let mut wanted: BTreeMap<ChunkKey, i32> = BTreeMap::new();
    for request in batch.leases.iter().filter(|r| !r.ringer) {
        *wanted.entry((request.job_id, request.idx)).or_default() += 1;
    }
    let claimed = if wanted.is_empty() {
        BTreeSet::new()
    } else {
        tx.claim_replicas(&wanted).await?
    };
    let granted: Vec<usize> = (0..batch.leases.len())
        .filter(|&i| {
            let request = &batch.leases[i];
            request.ringer || claimed.contains(&(request.job_id, request.idx))
        })
        .collect();
    if granted.is_empty() {
        return Ok(());
    }
    let requests: Vec<&LeaseRequest> = granted.iter().map(|&i| &batch.leases[i]).collect();
    let leases = tx.insert_leases(&requests, &batch.master_id).await?;
    let mut conflicted = BTreeSet::new();
    let mut started = BTreeSet::new();
    for (&i, lease) in granted.iter().zip(leases) {
        let request = &batch.leases[i];
        match lease {
            Some(lease) => {
                outcome.created.push(CreatedLease { lease, request: i });
                tx.tally().issued(request.job_id, request.ringer);
                started.insert(request.job_id);
            }
            None => {
                conflicted.insert((request.job_id, request.idx));
            }
        }
    }
    if !conflicted.is_empty() {
        // The claim took a wanted replica the insert did not use: the review wants it again.
        Box::pin(review::reconcile(
            tx,
            &conflicted,
            &[],
            outcome,
            batch.trust_off,
        ))
        .await?;
    }
    if !started.is_empty() {
        tx.mark_started(&started).await?;
    }
    Ok(())
}
