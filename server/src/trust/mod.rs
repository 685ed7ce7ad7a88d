//! Whom to believe: everything that decides whether a volunteer's answer is accepted, and what
//! happens to a volunteer caught lying (docs/trust.md has the why; this module the how).
//!
//! - [`verifier`]: the quorum rule, pure: given a chunk's replicas, accept, fail or want more.
//! - [`review`]: what runs inside every commit, over a small port ([`review::ReviewDb`]) that
//!   each store backend implements on its open transaction: spot-check ringers judged,
//!   verdicts and reputations, blacklisting, and backtracking of what a liar's word accepted.
//! - [`master_checks`]: the master computing accepted kernel chunks itself, an answer known
//!   independently of every worker (a disagreement is a proven lie).
//!
//! Where ringers are handed out (a share of assignments, [`RINGER_RATE`]) is the scheduler's
//! business; how often they are is decided here, with every other constant of the trust rules.

pub mod master_checks;
pub mod review;
pub mod verifier;

#[cfg(test)]
mod fake;

use std::time::Duration;

/// Validated results in a row after which a worker is trusted (BOINC's adaptive replication
/// uses 10).
pub const TRUST_THRESHOLD: u32 = 10;

/// The spot-check rate of a trusted worker's results never falls below this.
pub const MIN_CHECK_PROBABILITY: f64 = 0.05;

/// A chunk fails once this many times `max_replicas` leases expired without a result.
pub const MAX_EXPIRIES_PER_REPLICA: u32 = 3;

/// Invalid results (failed ringers included) after which a worker is blacklisted.
pub const BLACKLIST_AFTER_INVALID: i64 = 2;

/// Invalid results decay: each this many valid results forgive one, so an honest volunteer
/// who met a bad chunk years ago is not blacklisted by a second one today.
pub const VALID_RESULTS_PER_FORGIVEN_INVALID: i32 = 100;

/// How the blacklist reason of a proven liar starts (its blacklist is never lifted by a
/// withdrawn verdict).
pub const PROVEN_LIE: &str = "returned an output";

/// A session's assignments are all ringers while the pool has any, until it was sent
/// [`NEW_WORKER_RINGERS`] of them: a worker proves itself on answers the master knows before
/// its word counts (a liar is caught before it can collude), and an honest one earns trust.
pub const NEW_WORKER_RINGER_RATE: f64 = 1.0;

/// Ringers a session gets at [`NEW_WORKER_RINGER_RATE`]: enough to earn trust.
pub const NEW_WORKER_RINGERS: u32 = TRUST_THRESHOLD;

/// Afterwards, this share of assignments are ringers.
pub const RINGER_RATE: f64 = 0.02;

/// Ringer candidates the scheduler loads at once.
pub const RINGER_POOL_SIZE: i64 = 256;

/// How often the scheduler reloads the ringer pool and the blacklist; more often while the
/// pool is empty, so the first accepted answers become spot-checks quickly.
pub const TRUST_REFRESH: Duration = Duration::from_secs(5);

/// The reload interval while the ringer pool is empty.
pub const TRUST_REFRESH_EMPTY_POOL: Duration = Duration::from_millis(250);
