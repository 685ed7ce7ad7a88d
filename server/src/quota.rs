//! Tenant quotas: how much one submitter token may hold and how fast it may send.
//!
//! A tenant is a submitter token; the admin token is the host's own and has no quotas. Each
//! limit has a master-wide default ([`QuotaDefaults`], from flags) and may be overridden per
//! token by the admin ([`crate::api::tenants`], stored in the `tenants` table). Over a limit
//! the API answers 429 `quota_exceeded` with `Retry-After`, naming the limit and the use
//! ([`Error::QuotaExceeded`]); a single request bigger than the whole limit answers 413.
//!
//! - **Open chunks**: chunks not yet decided over the tenant's queued and running jobs, read
//!   from the jobs' counters (one row per such job, never its chunks) when a job is submitted
//!   ([`admit_job`]). Submissions of one tenant are admitted one at a time on a master; several
//!   masters sharing a database each admit on their own, so a tenant submitting to all of them
//!   at the same instant may pass its limit by one job per master.
//! - **Module bytes**: the bytes of the modules it uploaded that are stored, a counter the store
//!   checks and updates in the upload's transaction ([`store_module`]; exact on several masters
//!   too). Deleting a module gives its bytes back.
//! - **Submissions per minute**: job submissions and module uploads, accepted or not, counted
//!   before the body is read ([`SubmissionSlot`]); a GCRA per tenant and master, bursting up to
//!   the limit.
//!
//! Fair share (the tenant's weight) is applied by [`crate::scheduler::dispatch`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::{ModuleStored, Owner, Store, TenantSettings};

/// Default most open chunks per tenant: five jobs of the largest size.
pub const DEFAULT_MAX_OPEN_CHUNKS: u64 = 5_000_000;
/// Default most stored module bytes per tenant.
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;
/// Default most submissions (jobs and module uploads) per tenant and minute.
pub const DEFAULT_MAX_SUBMISSIONS_PER_MINUTE: u32 = 60;

/// How long a tenant's settings are kept in memory; other masters see the admin's changes
/// within this long.
const SETTINGS_TTL: Duration = Duration::from_secs(5);
/// `Retry-After` when over the open-chunk quota: its chunks are decided as workers return them.
const OPEN_CHUNKS_RETRY: Duration = Duration::from_secs(30);
/// `Retry-After` when over the module-byte quota: room comes from deleting modules.
const MODULE_BYTES_RETRY: Duration = Duration::from_secs(60);

/// The master-wide limits of a tenant without overrides; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDefaults {
    /// Most open chunks over a tenant's queued and running jobs.
    pub max_open_chunks: u64,
    /// Most bytes of a tenant's stored modules.
    pub max_module_bytes: u64,
    /// Most job submissions and module uploads per minute.
    pub max_submissions_per_minute: u32,
}

impl Default for QuotaDefaults {
    fn default() -> Self {
        QuotaDefaults {
            max_open_chunks: DEFAULT_MAX_OPEN_CHUNKS,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            max_submissions_per_minute: DEFAULT_MAX_SUBMISSIONS_PER_MINUTE,
        }
    }
}

/// A tenant's limits in force: its overrides, or the defaults. `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    /// Most open chunks.
    pub max_open_chunks: Option<u64>,
    /// Most stored module bytes.
    pub max_module_bytes: Option<u64>,
    /// Most submissions per minute.
    pub max_submissions_per_minute: Option<u32>,
}

impl TenantLimits {
    /// The limits `settings` put in force over `defaults`.
    pub fn resolve(settings: &TenantSettings, defaults: &QuotaDefaults) -> TenantLimits {
        // An override of 0 lifts the limit; no override takes the default, whose 0 is none.
        let pick = |own: Option<i64>, default: u64| {
            let value = own.map_or(default, |own| u64::try_from(own).unwrap_or(0));
            (value > 0).then_some(value)
        };
        TenantLimits {
            max_open_chunks: pick(settings.max_open_chunks, defaults.max_open_chunks),
            max_module_bytes: pick(settings.max_module_bytes, defaults.max_module_bytes),
            max_submissions_per_minute: pick(
                settings.max_submissions_per_minute.map(i64::from),
                u64::from(defaults.max_submissions_per_minute),
            )
            .map(|value| u32::try_from(value).unwrap_or(u32::MAX)),
        }
    }
}

/// The quota bookkeeping of one master, shared by its handlers.
pub struct Quotas {
    defaults: QuotaDefaults,
    /// Tenants' settings as last read, and when.
    settings: Mutex<HashMap<i64, (Instant, TenantSettings)>>,
    /// Each tenant's submission rate limiter and the per-minute limit it was made for.
    rates: Mutex<HashMap<i64, (u32, Arc<DefaultDirectRateLimiter>)>>,
    /// Each tenant's admission lock: its submissions are checked and stored one at a time.
    admissions: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl Quotas {
    /// Bookkeeping with these defaults.
    pub fn new(defaults: QuotaDefaults) -> Quotas {
        Quotas {
            defaults,
            settings: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            admissions: Mutex::new(HashMap::new()),
        }
    }

    /// The master-wide defaults.
    pub fn defaults(&self) -> &QuotaDefaults {
        &self.defaults
    }

    /// A tenant's settings, from memory when read recently. `None`: no such token.
    pub async fn settings(&self, store: &dyn Store, tenant: i64) -> Result<Option<TenantSettings>> {
        if let Some((read_at, settings)) = lock(&self.settings).get(&tenant)
            && read_at.elapsed() < SETTINGS_TTL
        {
            return Ok(Some(settings.clone()));
        }
        let settings = store.tenant(tenant).await?;
        if let Some(settings) = &settings {
            lock(&self.settings).insert(tenant, (Instant::now(), settings.clone()));
        }
        Ok(settings)
    }

    /// A tenant's limits in force (the defaults for a token that does not exist).
    pub async fn limits(&self, store: &dyn Store, tenant: i64) -> Result<TenantLimits> {
        let settings = self.settings(store, tenant).await?.unwrap_or_default();
        Ok(TenantLimits::resolve(&settings, &self.defaults))
    }

    /// The admin changed a tenant's settings on this master: use them at once.
    pub fn forget(&self, tenant: i64) {
        lock(&self.settings).remove(&tenant);
    }

    /// Count one submission of `tenant` against `per_minute`; the wait before the next one
    /// is allowed when it is refused.
    fn take_submission(&self, tenant: i64, per_minute: u32) -> std::result::Result<(), Duration> {
        let Some(rate) = NonZeroU32::new(per_minute) else {
            return Ok(());
        };
        let limiter = {
            let mut rates = lock(&self.rates);
            let entry = rates.entry(tenant).or_insert_with(|| {
                (
                    per_minute,
                    Arc::new(RateLimiter::direct(Quota::per_minute(rate))),
                )
            });
            if entry.0 != per_minute {
                *entry = (
                    per_minute,
                    Arc::new(RateLimiter::direct(Quota::per_minute(rate))),
                );
            }
            entry.1.clone()
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn admission_lock(&self, tenant: i64) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.admissions).entry(tenant).or_default().clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it consistent (single inserts/removes).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An extractor that counts the request against the caller's submissions per minute, before
/// the body is read: job submissions and module uploads take it. Refused: 429 with
/// `Retry-After`. The admin is not counted.
#[derive(Debug)]
pub struct SubmissionSlot;

impl FromRequestParts<AppState> for SubmissionSlot {
    type Rejection = crate::auth::AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, crate::auth::AuthRejection> {
        let Caller(Owner::Submitter(tenant)) = Caller::from_request_parts(parts, state).await?
        else {
            return Ok(SubmissionSlot);
        };
        let limits = state.quota.limits(&*state.store, tenant).await?;
        let Some(per_minute) = limits.max_submissions_per_minute else {
            return Ok(SubmissionSlot);
        };
        match state.quota.take_submission(tenant, per_minute) {
            Ok(()) => Ok(SubmissionSlot),
            Err(wait) => {
                metrics::counter!("grid_quota_refusals_total", "quota" => "max_submissions_per_minute")
                    .increment(1);
                Err(Error::QuotaExceeded {
                    quota: "max_submissions_per_minute",
                    limit: i64::from(per_minute),
                    used: i64::from(per_minute),
                    requested: 1,
                    message: format!(
                        "token {tenant} sent {per_minute} submissions (jobs and module uploads) \
                         within a minute, its max_submissions_per_minute; the next one is \
                         allowed in {:.1} s",
                        wait.as_secs_f64()
                    ),
                    retry_after: wait,
                }
                .into())
            }
        }
    }
}

/// A job admitted against its owner's open-chunk quota; the owner's next submission waits
/// until this is dropped (after the job is stored), so two cannot both pass the check.
#[derive(Debug)]
pub struct Admitted {
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Admit a job of `chunks` chunks for `owner`, or refuse it: 429 `quota_exceeded` when the
/// owner's open chunks would pass its `max_open_chunks`, 413 when the job alone would. Keep
/// the returned value until the job is stored.
pub async fn admit_job(state: &AppState, owner: Owner, chunks: usize) -> Result<Admitted> {
    let Owner::Submitter(tenant) = owner else {
        return Ok(Admitted { _turn: None });
    };
    let limits = state.quota.limits(&*state.store, tenant).await?;
    let Some(limit) = limits.max_open_chunks else {
        return Ok(Admitted { _turn: None });
    };
    let requested = chunks as u64;
    if requested > limit {
        return Err(Error::TooLarge(format!(
            "this job has {requested} chunks; token {tenant} may hold at most {limit} open \
             chunks (its max_open_chunks)"
        )));
    }
    let turn = state.quota.admission_lock(tenant).lock_owned().await;
    let open = state.store.tenant_usage(tenant).await?.open_chunks;
    let open = u64::try_from(open).unwrap_or(0);
    if open + requested > limit {
        metrics::counter!("grid_quota_refusals_total", "quota" => "max_open_chunks").increment(1);
        return Err(Error::QuotaExceeded {
            quota: "max_open_chunks",
            limit: limit as i64,
            used: open as i64,
            requested: requested as i64,
            message: format!(
                "token {tenant} holds {open} open chunks; this job's {requested} would pass its \
                 max_open_chunks of {limit} (try again once some are decided)"
            ),
            retry_after: OPEN_CHUNKS_RETRY,
        });
    }
    Ok(Admitted { _turn: Some(turn) })
}

/// Store an uploaded module, its bytes counted against the uploader's `max_module_bytes`:
/// 429 `quota_exceeded` when they would pass it, 413 when the module alone would.
pub async fn store_module(
    state: &AppState,
    owner: Owner,
    id: &str,
    bytes: &[u8],
) -> Result<ModuleStored> {
    let limit = match owner {
        Owner::Admin => None,
        Owner::Submitter(tenant) => {
            state
                .quota
                .limits(&*state.store, tenant)
                .await?
                .max_module_bytes
        }
    };
    let size = bytes.len() as u64;
    if let (Owner::Submitter(tenant), Some(limit)) = (owner, limit)
        && size > limit
    {
        return Err(Error::TooLarge(format!(
            "this module is {size} bytes; token {tenant} may store at most {limit} bytes of \
             modules (its max_module_bytes)"
        )));
    }
    let limit_stored = limit.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
    let stored = state
        .store
        .put_module(owner, id, bytes, limit_stored)
        .await?;
    if let (ModuleStored::OverQuota { stored: used }, Owner::Submitter(tenant), Some(limit)) =
        (stored, owner, limit)
    {
        metrics::counter!("grid_quota_refusals_total", "quota" => "max_module_bytes").increment(1);
        return Err(Error::QuotaExceeded {
            quota: "max_module_bytes",
            limit: limit as i64,
            used,
            requested: size as i64,
            message: format!(
                "token {tenant} stores {used} bytes of modules; this one's {size} would pass its \
                 max_module_bytes of {limit} (DELETE /api/v1/modules/{{id}} makes room)"
            ),
            retry_after: MODULE_BYTES_RETRY,
        });
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_defaults_and_zero_lifts_a_limit() {
        let defaults = QuotaDefaults::default();
        let none = TenantLimits::resolve(&TenantSettings::default(), &defaults);
        assert_eq!(none.max_open_chunks, Some(DEFAULT_MAX_OPEN_CHUNKS));
        assert_eq!(
            none.max_submissions_per_minute,
            Some(DEFAULT_MAX_SUBMISSIONS_PER_MINUTE)
        );
        let own = TenantSettings {
            weight: 3,
            max_open_chunks: Some(10),
            max_module_bytes: Some(0),
            max_submissions_per_minute: None,
        };
        let limits = TenantLimits::resolve(&own, &defaults);
        assert_eq!(limits.max_open_chunks, Some(10));
        assert_eq!(limits.max_module_bytes, None);
        let unlimited = QuotaDefaults {
            max_open_chunks: 0,
            max_module_bytes: 0,
            max_submissions_per_minute: 0,
        };
        let limits = TenantLimits::resolve(&TenantSettings::default(), &unlimited);
        assert_eq!(limits.max_open_chunks, None);
        assert_eq!(limits.max_submissions_per_minute, None);
    }

    #[test]
    fn submissions_burst_to_the_limit_then_wait() {
        let quotas = Quotas::new(QuotaDefaults::default());
        for _ in 0..3 {
            assert!(quotas.take_submission(7, 3).is_ok());
        }
        let wait = quotas
            .take_submission(7, 3)
            .expect_err("a fourth within the minute");
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another tenant has its own budget; a changed limit starts afresh.
        assert!(quotas.take_submission(8, 3).is_ok());
        assert!(quotas.take_submission(7, 4).is_ok());
    }
}
