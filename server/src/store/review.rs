//! The part of a commit every backend shares: given the touched chunks and all their replicas,
//! run the verifier and sort its decisions into what each backend then writes.

use std::collections::BTreeMap;

use super::BatchOutcome;
use crate::verifier::{self, Decision, QuorumPolicy, ReplicaFact};

/// A chunk as the verifier needs it, loaded (and locked) by a backend.
#[derive(Debug)]
pub struct ChunkUnderReview {
    /// `open`, `done`, `failed` or `cancelled`: only open chunks are decided.
    pub state: String,
    /// Replicas currently wanted.
    pub wanted: i32,
    /// The job's quorum policy.
    pub policy: QuorumPolicy,
    /// Every replica of the chunk.
    pub replicas: Vec<ReplicaFact>,
}

/// A chunk accepted with a quorum.
#[derive(Debug)]
pub struct Accepted {
    /// Job id.
    pub job_id: i64,
    /// Chunk index.
    pub idx: i32,
    /// The replica whose outcome is stored.
    pub canonical: i64,
    /// How many agreed.
    pub agreeing: i32,
    /// The agreed outcome is an error: the chunk fails with it.
    pub is_error: bool,
    /// The winning digest: returned replicas with another digest are invalid.
    pub digest: [u8; 32],
}

/// Everything the verifier decided for one batch.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Chunks accepted (with an output or an agreed error).
    pub accepted: Vec<Accepted>,
    /// Chunks failed without quorum: `(job_id, idx, reason)`.
    pub failed: Vec<(i64, i32, String)>,
    /// Chunks whose wanted count changes: `(job_id, idx, wanted)`.
    pub wanted: Vec<(i64, i32, i32)>,
    /// Per job, chunks newly done and newly failed.
    pub finished_per_job: BTreeMap<i64, (i32, i32)>,
    /// Some chunk wants more replicas than before.
    pub reopened: bool,
}

impl Decisions {
    /// Every chunk decided (accepted or failed) in this batch.
    pub fn decided(&self) -> impl Iterator<Item = (i64, i32)> + '_ {
        self.accepted
            .iter()
            .map(|a| (a.job_id, a.idx))
            .chain(self.failed.iter().map(|f| (f.0, f.1)))
    }
}

/// Run the verifier over every open chunk under review.
pub fn review(chunks: &BTreeMap<(i64, i32), ChunkUnderReview>) -> Decisions {
    let mut decisions = Decisions::default();
    for (&(job_id, idx), chunk) in chunks {
        if chunk.state != "open" {
            continue;
        }
        match verifier::decide(chunk.policy, &chunk.replicas) {
            Decision::Accept {
                canonical,
                digest,
                agreeing,
                is_error,
            } => {
                decisions.accepted.push(Accepted {
                    job_id,
                    idx,
                    canonical,
                    agreeing: i32::try_from(agreeing).unwrap_or(i32::MAX),
                    is_error,
                    digest,
                });
                let counts = decisions.finished_per_job.entry(job_id).or_default();
                if is_error {
                    counts.1 += 1;
                } else {
                    counts.0 += 1;
                }
            }
            Decision::Fail(reason) => {
                decisions.failed.push((job_id, idx, reason));
                decisions.finished_per_job.entry(job_id).or_default().1 += 1;
            }
            Decision::Want(n) => {
                let n = i32::try_from(n).unwrap_or(i32::MAX);
                if n != chunk.wanted {
                    decisions.reopened |= n > chunk.wanted;
                    decisions.wanted.push((job_id, idx, n));
                }
            }
        }
    }
    decisions
}

/// The verifier's view of a replica row.
pub fn replica_status(
    state: &str,
    digest: Option<[u8; 32]>,
    is_error: Option<bool>,
) -> verifier::ReplicaStatus {
    match (state, digest) {
        ("leased", _) => verifier::ReplicaStatus::Live,
        ("returned", Some(digest)) => verifier::ReplicaStatus::Returned {
            digest,
            is_error: is_error.unwrap_or(false),
        },
        _ => verifier::ReplicaStatus::Ended,
    }
}

/// Add the batch's decisions to the outcome's counters.
pub fn count_decisions(decisions: &Decisions, outcome: &mut BatchOutcome) {
    for accepted in &decisions.accepted {
        if accepted.is_error {
            outcome.failed += 1;
        } else {
            outcome.accepted += 1;
        }
    }
    outcome.failed += decisions.failed.len() as u64;
}

/// Add verdicts (`valid` / `invalid`) to the outcome's counters.
pub fn count_verdicts(verdicts: &[String], outcome: &mut BatchOutcome) {
    for verdict in verdicts {
        if verdict == "valid" {
            outcome.valid_replicas += 1;
        } else {
            outcome.invalid_replicas += 1;
        }
    }
}
