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
//!   [`MAX_EXPIRIES_PER_REPLICA`] times `max_replicas` of them. The store never gives a chunk
//!   twice to one identity or one network (the `independence` migration), so these are ends
//!   from that many distinct workers on distinct networks: one peer cannot fail a chunk by
//!   taking and releasing it.
//! - Results and leases of blacklisted workers count for nothing.
//! - Adaptive jobs (docs/trust.md) issue one replica first. When its result comes from a
//!   trusted worker (at least [`TRUST_THRESHOLD`] validated results in a row) it is accepted
//!   alone, unless a random draw selects it for a spot-check with probability
//!   [`check_probability`]; then, as for untrusted workers, the chunk needs `redundancy`
//!   agreeing results. The chunk's quorum is fixed at that moment and persisted.

use super::{MAX_EXPIRIES_PER_REPLICA, MIN_CHECK_PROBABILITY, TRUST_THRESHOLD};

/// Probability that a trusted worker's result is checked by another replica, given its
/// validated results in a row `c` (≥ [`TRUST_THRESHOLD`]): `max(0.05, 1 / (c − T + 1))` — every
/// result is checked when trust is new, then the rate falls harmonically to 5%.
pub fn check_probability(consecutive_valid: u32) -> f64 {
    if consecutive_valid < TRUST_THRESHOLD {
        return 1.0;
    }
    let earned = f64::from(consecutive_valid - TRUST_THRESHOLD + 1);
    (1.0 / earned).max(MIN_CHECK_PROBABILITY)
}

/// What the verifier knows of the worker behind a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Standing {
    /// Not (yet) trusted.
    #[default]
    Untrusted,
    /// Validated results in a row (trusted from [`TRUST_THRESHOLD`]).
    Reputed(u32),
    /// Caught lying: its results count for nothing.
    Blacklisted,
}

impl Standing {
    /// From the worker's reputation columns.
    pub fn from_reputation(consecutive_valid: i64, blacklisted: bool) -> Self {
        if blacklisted {
            Standing::Blacklisted
        } else {
            Standing::Reputed(u32::try_from(consecutive_valid).unwrap_or(0))
        }
    }

    /// Whether the worker is trusted now.
    pub fn is_trusted(self) -> bool {
        self.trusted().is_some()
    }

    fn trusted(self) -> Option<u32> {
        match self {
            Standing::Reputed(c) if c >= TRUST_THRESHOLD => Some(c),
            _ => None,
        }
    }
}

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
    /// Its worker's standing.
    pub standing: Standing,
}

/// The chunk's verification parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuorumPolicy {
    /// Agreeing distinct workers needed (the job's redundancy).
    pub redundancy: u32,
    /// Most results before failing.
    pub max_replicas: u32,
    /// Adaptive verification (else fixed).
    pub adaptive: bool,
    /// Adaptive: the quorum already fixed for this chunk, if any.
    pub quorum: Option<u32>,
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
        /// Accepted on one trusted worker's word alone (adaptive).
        alone: bool,
    },
    /// Keep exactly this many replicas wanted (possibly zero: wait for live leases).
    Want(u32),
    /// Give up on the chunk.
    Fail(String),
}

/// Decide a chunk's fate from all its replicas. `draw` is a uniform random number in [0, 1)
/// used for adaptive spot-checks. Also returns the quorum to persist when it is fixed now.
pub fn decide(
    policy: QuorumPolicy,
    replicas: &[ReplicaFact],
    draw: f64,
) -> (Decision, Option<u32>) {
    // Blacklisted workers' results and leases count for nothing.
    let counted: Vec<ReplicaFact> = replicas
        .iter()
        .map(|replica| match replica.standing {
            Standing::Blacklisted => ReplicaFact {
                status: ReplicaStatus::Ended,
                ..*replica
            },
            _ => *replica,
        })
        .collect();
    if !policy.adaptive || policy.quorum.is_some() {
        let quorum = policy.quorum.unwrap_or(policy.redundancy);
        return (decide_with_quorum(policy, quorum, &counted), None);
    }
    // Adaptive and undecided: look at the first result.
    let first = counted
        .iter()
        .filter(|r| matches!(r.status, ReplicaStatus::Returned { .. }))
        .min_by_key(|r| r.lease);
    match first {
        None => (decide_with_quorum(policy, 1, &counted), None),
        Some(first) => {
            if let (Some(c), ReplicaStatus::Returned { digest, is_error }) =
                (first.standing.trusted(), first.status)
                && draw >= check_probability(c)
            {
                let decision = Decision::Accept {
                    canonical: first.lease,
                    digest,
                    agreeing: 1,
                    is_error,
                    alone: true,
                };
                return (decision, Some(1));
            }
            let quorum = policy.redundancy;
            (decide_with_quorum(policy, quorum, &counted), Some(quorum))
        }
    }
}

fn decide_with_quorum(policy: QuorumPolicy, quorum: u32, replicas: &[ReplicaFact]) -> Decision {
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
        && agreeing >= quorum
    {
        return Decision::Accept {
            canonical,
            digest,
            agreeing,
            is_error,
            alone: false,
        };
    }
    let needed = quorum.saturating_sub(best_count).saturating_sub(live);
    let room = policy.max_replicas.saturating_sub(returned + live);
    if needed > 0 && room == 0 && live == 0 {
        return Decision::Fail(format!(
            "no quorum: {returned} results in {} disagreeing groups (largest {best_count}, \
             {quorum} needed); max_replicas reached",
            groups.len(),
        ));
    }
    if needed > 0 && ended >= MAX_EXPIRIES_PER_REPLICA * policy.max_replicas && live == 0 {
        return Decision::Fail(format!(
            "{ended} leases ended without a result, each from another worker and network; \
             the chunk may crash or stall workers"
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
        adaptive: false,
        quorum: None,
    };

    fn decide(policy: QuorumPolicy, replicas: &[ReplicaFact]) -> Decision {
        super::decide(policy, replicas, 0.5).0
    }

    fn returned(lease: i64, byte: u8) -> ReplicaFact {
        ReplicaFact {
            lease,
            status: ReplicaStatus::Returned {
                digest: [byte; 32],
                is_error: false,
            },
            standing: Standing::Untrusted,
        }
    }

    fn live(lease: i64) -> ReplicaFact {
        ReplicaFact {
            lease,
            status: ReplicaStatus::Live,
            standing: Standing::Untrusted,
        }
    }

    fn ended(lease: i64) -> ReplicaFact {
        ReplicaFact {
            lease,
            status: ReplicaStatus::Ended,
            standing: Standing::Untrusted,
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
                is_error: false,
                alone: false,
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
            standing: Standing::Untrusted,
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
            ..QuorumPolicy::default()
        };
        assert!(matches!(
            decide(policy, &[returned(1, 7)]),
            Decision::Accept { agreeing: 1, .. }
        ));
    }

    const ADAPTIVE: QuorumPolicy = QuorumPolicy {
        redundancy: 2,
        max_replicas: 5,
        adaptive: true,
        quorum: None,
    };

    fn by(standing: Standing, fact: ReplicaFact) -> ReplicaFact {
        ReplicaFact { standing, ..fact }
    }

    #[test]
    fn adaptive_issues_one_replica_then_trusts_or_checks() {
        assert_eq!(super::decide(ADAPTIVE, &[], 0.5), (Decision::Want(1), None));
        // A trusted worker's result, not drawn for a check: accepted alone.
        let trusted = by(Standing::Reputed(200), returned(1, 7));
        let (decision, quorum) = super::decide(ADAPTIVE, &[trusted], 0.5);
        assert!(matches!(
            decision,
            Decision::Accept {
                alone: true,
                agreeing: 1,
                ..
            }
        ));
        assert_eq!(quorum, Some(1));
        // Drawn for a check (draw below 5%): a second replica is wanted.
        assert_eq!(
            super::decide(ADAPTIVE, &[trusted], 0.01),
            (Decision::Want(1), Some(2))
        );
        // Untrusted workers are always checked.
        let newcomer = by(Standing::Reputed(3), returned(1, 7));
        assert_eq!(
            super::decide(ADAPTIVE, &[newcomer], 0.99),
            (Decision::Want(1), Some(2))
        );
        // Once fixed, the quorum holds.
        let fixed = QuorumPolicy {
            quorum: Some(2),
            ..ADAPTIVE
        };
        assert!(matches!(
            super::decide(fixed, &[newcomer, returned(2, 7)], 0.99).0,
            Decision::Accept {
                agreeing: 2,
                alone: false,
                ..
            }
        ));
    }

    #[test]
    fn blacklisted_results_count_for_nothing() {
        let liar = by(Standing::Blacklisted, returned(1, 6));
        let liar2 = by(Standing::Blacklisted, returned(2, 6));
        assert_eq!(decide(POLICY, &[liar, liar2]), Decision::Want(2));
        assert!(matches!(
            decide(POLICY, &[liar, liar2, returned(3, 7), returned(4, 7)]),
            Decision::Accept { canonical: 3, .. }
        ));
    }

    #[test]
    fn check_probability_falls_harmonically_to_the_floor() {
        assert_eq!(check_probability(0), 1.0);
        assert_eq!(check_probability(TRUST_THRESHOLD), 1.0);
        assert_eq!(check_probability(TRUST_THRESHOLD + 1), 0.5);
        assert_eq!(check_probability(TRUST_THRESHOLD + 3), 0.25);
        assert_eq!(check_probability(10_000), MIN_CHECK_PROBABILITY);
    }
}
