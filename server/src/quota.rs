//! Tenant quotas: how much one submitter token may hold and how fast it may submit.
//!
//! A tenant is a submitter token; the admin token is the host's own and has no quotas. The
//! limits are master-wide flags ([`crate::limits::Limits`], README "Tenant quotas and
//! retention"); 0 lifts one. Over a quota the API answers 429 `quota_exceeded` with
//! `Retry-After` and a message naming the quota, its limit and the current use
//! ([`Error::QuotaExceeded`]); a single request bigger than the whole limit answers 413 with
//! the same code, since waiting cannot help. Nothing is stored on a refusal.
//!
//! - **Open chunks** (`max_open_chunks`): chunks not yet decided over the tenant's queued and
//!   running jobs, the new job's included. Summed from the jobs' counters (never by counting
//!   chunk rows) inside the transaction that stores the job, after taking a per-tenant lock
//!   (a PostgreSQL advisory lock; SQLite has one writer), so two concurrent submissions cannot
//!   both pass a limit they jointly exceed, even on several masters. See the stores'
//!   `create_job`.
//! - **Module bytes** (`max_module_bytes`): the sizes of the modules the tenant uploaded and has
//!   not deleted (`module_uploads`), checked the same way in the upload's transaction.
//! - **Submissions per minute** (`max_submissions_per_minute`): job submissions and module
//!   uploads, counted before the body is read ([`SubmissionRate`]), in memory per master.
//!
//! What lives elsewhere: the flags in [`crate::config`], fair share in the scheduler.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::store::Owner;

/// Default most open chunks per submitter token (one job of the largest size).
pub const DEFAULT_MAX_OPEN_CHUNKS: u64 = 1_000_000;
/// Default most stored module bytes per submitter token.
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;
/// Default most submissions (jobs and module uploads) per submitter token and minute.
pub const DEFAULT_MAX_SUBMISSIONS_PER_MINUTE: u32 = 60;

/// `Retry-After` over the open-chunk quota: chunks are decided as workers return them, so
/// room appears without the tenant doing anything.
pub const OPEN_CHUNKS_RETRY: Duration = Duration::from_secs(10);
/// `Retry-After` over the module-byte quota: room comes from deleting modules.
pub const MODULE_BYTES_RETRY: Duration = Duration::from_secs(60);

/// The open-chunk limit of `owner`, or `None` when it has none (the admin, or 0).
pub fn open_chunk_limit(limits: &Limits, owner: Owner) -> Option<u64> {
    match owner {
        Owner::Admin => None,
        Owner::Submitter(_) => (limits.max_open_chunks > 0).then_some(limits.max_open_chunks),
    }
}

/// The module-byte limit of `owner`, or `None` when it has none (the admin, or 0).
pub fn module_byte_limit(limits: &Limits, owner: Owner) -> Option<u64> {
    match owner {
        Owner::Admin => None,
        Owner::Submitter(_) => {
            (limits.max_module_bytes_per_token > 0).then_some(limits.max_module_bytes_per_token)
        }
    }
}

/// The refusal of a job of `requested` chunks when `used` are open under `limit`.
pub fn open_chunks_exceeded(limit: u64, used: u64, requested: u64) -> Error {
    let (retry_after, hint) = if requested > limit {
        (None, "this job alone is over the limit: split it")
    } else {
        (
            Some(OPEN_CHUNKS_RETRY),
            "try again once some of them are decided",
        )
    };
    Error::QuotaExceeded {
        quota: "max_open_chunks",
        retry_after,
        message: format!(
            "quota max_open_chunks exceeded: limit {limit}, in use {used} open chunks, this job \
             {requested}; {hint}"
        ),
    }
}

/// The refusal of a module of `requested` bytes when `used` are stored under `limit`.
pub fn module_bytes_exceeded(limit: u64, used: u64, requested: u64) -> Error {
    let (retry_after, hint) = if requested > limit {
        (None, "this module alone is over the limit")
    } else {
        (
            Some(MODULE_BYTES_RETRY),
            "DELETE /api/v1/modules/{id} of a module you no longer need makes room",
        )
    };
    Error::QuotaExceeded {
        quota: "max_module_bytes",
        retry_after,
        message: format!(
            "quota max_module_bytes exceeded: limit {limit} bytes, in use {used} bytes, this \
             module {requested}; {hint}"
        ),
    }
}

/// Submissions per token and window, as a GCRA (generic cell rate algorithm): a token may send
/// `per_window` submissions at once, then one every `window / per_window`. One instant per
/// token is all it keeps.
#[derive(Debug)]
pub struct SubmissionRate {
    /// Submissions allowed per window; 0: no limit.
    per_window: u32,
    /// The window (a minute, shorter in tests).
    window: Duration,
    /// Per token, the theoretical arrival time of its next submission.
    next: Mutex<HashMap<i64, Instant>>,
}

/// Tokens tracked before entries that are fully rested are dropped.
const TRACKED_TOKENS: usize = 10_000;

impl SubmissionRate {
    /// The rate these limits set.
    pub fn new(limits: &Limits) -> SubmissionRate {
        SubmissionRate {
            per_window: limits.max_submissions_per_minute,
            window: limits.submission_window.max(Duration::from_millis(1)),
            next: Mutex::new(HashMap::new()),
        }
    }

    /// Count one submission of `owner`, or refuse it with 429 `quota_exceeded` and the real
    /// time until a slot frees. The admin is not counted.
    pub fn take(&self, owner: Owner) -> Result<()> {
        let Owner::Submitter(token) = owner else {
            return Ok(());
        };
        match self.take_at(token, Instant::now()) {
            Ok(()) => Ok(()),
            Err(wait) => Err(Error::QuotaExceeded {
                quota: "max_submissions_per_minute",
                retry_after: Some(wait),
                message: format!(
                    "quota max_submissions_per_minute exceeded: limit {} per {} s, in use {} \
                         (job submissions and module uploads); the next is allowed in {:.1} s",
                    self.per_window,
                    self.window.as_secs_f64(),
                    self.per_window,
                    wait.as_secs_f64()
                ),
            }),
        }
    }

    /// [`Self::take`] at `now`: `Err(wait)` when refused.
    fn take_at(&self, token: i64, now: Instant) -> std::result::Result<(), Duration> {
        if self.per_window == 0 {
            return Ok(());
        }
        let interval = self.window / self.per_window;
        // A burst of `per_window` fits: the arrival time may run this far ahead of now.
        let tolerance = self.window.saturating_sub(interval);
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if next.len() >= TRACKED_TOKENS {
            next.retain(|_, at| *at > now);
        }
        let at = next.get(&token).copied().unwrap_or(now).max(now);
        let ahead = at - now;
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        next.insert(token, at + interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_window: u32, window: Duration) -> SubmissionRate {
        SubmissionRate::new(&Limits {
            max_submissions_per_minute: per_window,
            submission_window: window,
            ..Limits::default()
        })
    }

    #[test]
    fn a_burst_up_to_the_limit_then_one_per_interval() {
        let rate = rate(3, Duration::from_secs(60));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(rate.take_at(7, start).is_ok());
        }
        let wait = rate
            .take_at(7, start)
            .expect_err("a fourth within the window");
        assert_eq!(wait, Duration::from_secs(20));
        // Another token has its own budget.
        assert!(rate.take_at(8, start).is_ok());
        // Exactly when the slot frees, one more passes, and only one.
        assert!(rate.take_at(7, start + wait).is_ok());
        assert!(rate.take_at(7, start + wait).is_err());
        // Rested for a whole window: a full burst again.
        let later = start + Duration::from_secs(200);
        for _ in 0..3 {
            assert!(rate.take_at(7, later).is_ok());
        }
        assert!(rate.take_at(7, later).is_err());
    }

    #[test]
    fn zero_is_no_limit_and_the_admin_is_never_counted() {
        let unlimited = rate(0, Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(unlimited.take(Owner::Submitter(1)).is_ok());
        }
        let one = rate(1, Duration::from_secs(60));
        for _ in 0..10 {
            assert!(one.take(Owner::Admin).is_ok());
        }
        assert!(one.take(Owner::Submitter(1)).is_ok());
        let refused = one.take(Owner::Submitter(1)).expect_err("second");
        assert!(matches!(
            refused,
            Error::QuotaExceeded {
                quota: "max_submissions_per_minute",
                retry_after: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn a_request_over_the_whole_limit_is_413_not_429() {
        assert!(matches!(
            open_chunks_exceeded(10, 0, 11),
            Error::QuotaExceeded {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            open_chunks_exceeded(10, 5, 6),
            Error::QuotaExceeded {
                retry_after: Some(OPEN_CHUNKS_RETRY),
                ..
            }
        ));
        assert!(matches!(
            module_bytes_exceeded(10, 5, 6),
            Error::QuotaExceeded {
                retry_after: Some(MODULE_BYTES_RETRY),
                ..
            }
        ));
    }
}
