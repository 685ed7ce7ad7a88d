//! The quorum rule: given every replica of a chunk, decide whether it is accepted, failed, or
//! wants more replicas. Pure and synchronous, so every store backend decides identically and
//! the rule is unit-tested on its own.
//!
//! The rule (after BOINC's transitioner and validator):
//! - Results are grouped by outcome digest. When a group reaches `redundancy` distinct workers,
//!   its outcome is accepted (an agreed error fails the chunk with that error).
//! - Otherwise the chunk wants enough new replicas that, if every live lease agrees with the
//!   largest group, the quorum is reached — never letting results plus live leases exceed
//!   `max_replicas`. A disagreement therefore issues one more replica.
//! - When `max_replicas` results are in and no group has a quorum, the chunk fails.
//! - Leases that end without a result do not count against `max_replicas`, but a chunk whose
//!   leases keep expiring (it crashes or hangs every worker) fails after
//!   [`MAX_EXPIRIES_PER_REPLICA`] times `max_replicas` of them.

/// A chunk fails once this many times `max_replicas` leases expired without a result.
pub const MAX_EXPIRIES_PER_REPLICA: u32 = 3;

/// A replica's state as the verifier sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaStatus {
    /// Leased and not yet returned.
    Live,
    /// Returned with this outcome digest.
    Returned {
        /// Outcome digest.
        digest: [u8; 32],
        /// Whether the outcome is an error.
        is_error: bool,
    },
    /// Ended without a result (expired, released or revoked).
    Ended,
}

/// One replica of the chunk, by lease id.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaFact {
    /// Lease id (lower is older).
    pub lease: i64,
    /// Its status.
    pub status: ReplicaStatus,
}

/// The chunk's verification parameters.
#[derive(Debug, Clone, Copy)]
pub struct QuorumPolicy {
    /// Agreeing distinct workers needed.
    pub redundancy: u32,
    /// Most results before failing.
    pub max_replicas: u32,
}

/// What to do with the chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept the outcome of `canonical` (the oldest replica of the winning group).
    Accept {
        /// The replica whose outcome is stored.
        canonical: i64,
        /// Its digest: replicas with another digest are invalid.
        digest: [u8; 32],
        /// How many agreed.
        agreeing: u32,
        /// Whether the agreed outcome is an error (the chunk fails with it).
        is_error: bool,
    },
    /// Keep exactly this many replicas wanted (possibly zero: wait for live leases).
    Want(u32),
    /// Give up on the chunk.
    Fail(String),
}

/// Decide a chunk's fate from all its replicas.
pub fn decide(policy: QuorumPolicy, replicas: &[ReplicaFact]) -> Decision {
    // Groups of agreeing results: (digest, is_error, count, oldest lease). Few per chunk, so a
    // vector beats a map and keeps the order deterministic.
    let mut groups: Vec<([u8; 32], bool, u32, i64)> = Vec::new();
    let (mut live, mut returned, mut ended) = (0u32, 0u32, 0u32);
    for replica in replicas {
        match replica.status {
            ReplicaStatus::Live => live += 1,
            ReplicaStatus::Ended => ended += 1,
            ReplicaStatus::Returned { digest, is_error } => {
                returned += 1;
                match groups.iter_mut().find(|group| group.0 == digest) {
                    Some(group) => {
                        group.2 += 1;
                        group.3 = group.3.min(replica.lease);
                    }
                    None => groups.push((digest, is_error, 1, replica.lease)),
                }
            }
        }
    }
    // Largest group; ties go to the one whose first result came first.
    let best = groups
        .iter()
        .max_by(|a, b| a.2.cmp(&b.2).then(b.3.cmp(&a.3)))
        .copied();
    let best_count = best.map_or(0, |group| group.2);
    if let Some((digest, is_error, agreeing, canonical)) = best
        && agreeing >= policy.redundancy
    {
        return Decision::Accept {
            canonical,
            digest,
            agreeing,
            is_error,
        };
    }
    let needed = policy
        .redundancy
        .saturating_sub(best_count)
        .saturating_sub(live);
    let room = policy.max_replicas.saturating_sub(returned + live);
    if needed > 0 && room == 0 && live == 0 {
        return Decision::Fail(format!(
            "no quorum: {returned} results in {} disagreeing groups (largest {best_count}, \
             {} needed); max_replicas reached",
            groups.len(),
            policy.redundancy
        ));
    }
    if needed > 0 && ended >= MAX_EXPIRIES_PER_REPLICA * policy.max_replicas && live == 0 {
        return Decision::Fail(format!(
            "{ended} leases ended without a result; the chunk may crash or stall workers"
        ));
    }
    Decision::Want(needed.min(room))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: QuorumPolicy = QuorumPolicy {
        redundancy: 2,
        max_replicas: 4,
    };

    fn returned(lease: i64, byte: u8) -> ReplicaFact {
        ReplicaFact {
            lease,
            status: ReplicaStatus::Returned {
                digest: [byte; 32],
                is_error: false,
            },
        }
    }

    fn live(lease: i64) -> ReplicaFact {
        ReplicaFact {
            lease,
            status: ReplicaStatus::Live,
        }
    }

    fn ended(lease: i64) -> ReplicaFact {
        ReplicaFact {
            lease,
            status: ReplicaStatus::Ended,
        }
    }

    #[test]
    fn fresh_chunk_wants_redundancy_replicas() {
        assert_eq!(decide(POLICY, &[]), Decision::Want(2));
        assert_eq!(decide(POLICY, &[live(1)]), Decision::Want(1));
        assert_eq!(decide(POLICY, &[live(1), live(2)]), Decision::Want(0));
    }

    #[test]
    fn agreement_accepts_the_oldest_of_the_group() {
        let decision = decide(POLICY, &[returned(5, 1), returned(3, 1)]);
        assert_eq!(
            decision,
            Decision::Accept {
                canonical: 3,
                digest: [1; 32],
                agreeing: 2,
                is_error: false
            }
        );
    }

    #[test]
    fn disagreement_issues_one_more_then_fails_at_max() {
        assert_eq!(
            decide(POLICY, &[returned(1, 1), returned(2, 2)]),
            Decision::Want(1)
        );
        assert_eq!(
            decide(POLICY, &[returned(1, 1), returned(2, 2), live(3)]),
            Decision::Want(0)
        );
        let four = [
            returned(1, 1),
            returned(2, 2),
            returned(3, 3),
            returned(4, 4),
        ];
        assert!(
            matches!(decide(POLICY, &four), Decision::Fail(reason) if reason.contains("no quorum"))
        );
        // The liar is outvoted when the next honest result arrives.
        assert!(matches!(
            decide(POLICY, &[returned(1, 1), returned(2, 2), returned(3, 1)]),
            Decision::Accept {
                canonical: 1,
                agreeing: 2,
                ..
            }
        ));
    }

    #[test]
    fn ended_leases_are_replaced_and_eventually_fail_the_chunk() {
        assert_eq!(
            decide(POLICY, &[ended(1), returned(2, 1)]),
            Decision::Want(1)
        );
        let many: Vec<_> = (0..12).map(ended).collect();
        assert!(matches!(decide(POLICY, &many), Decision::Fail(_)));
    }

    #[test]
    fn agreed_errors_are_accepted_as_errors() {
        let error = |lease| ReplicaFact {
            lease,
            status: ReplicaStatus::Returned {
                digest: [9; 32],
                is_error: true,
            },
        };
        assert!(matches!(
            decide(POLICY, &[error(1), error(2)]),
            Decision::Accept { is_error: true, .. }
        ));
    }

    #[test]
    fn redundancy_one_accepts_the_first_result() {
        let policy = QuorumPolicy {
            redundancy: 1,
            max_replicas: 1,
        };
        assert!(matches!(
            decide(policy, &[returned(1, 7)]),
            Decision::Accept { agreeing: 1, .. }
        ));
    }
}
