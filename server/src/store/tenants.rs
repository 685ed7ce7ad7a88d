//! What both backends share for tenants (quotas, fair share) and retention: the portable SQL
//! (`$N` placeholders work on SQLite too) and the row handling around it. The statements are
//! run by [`super::postgres`] and [`super::sqlite`]; what they mean is in [`crate::quota`],
//! [`crate::scheduler::dispatch`] and [`crate::retention`].

use std::collections::HashMap;

use super::{ADMIN_TENANT, ReadyChunk, ReplicaCounts, Share, TenantSettings};
use crate::error::Error;

/// Tenants with queued or running jobs (the only ones with ready chunks) and their weights:
/// `(tenant, weight)`. Reads `jobs_active_by_owner`, at most one row per open chunk.
pub(crate) const ACTIVE_TENANTS_SQL: &str = "
    SELECT a.tenant, COALESCE(t.weight, 1) AS weight
    FROM (SELECT DISTINCT COALESCE(owner_token_id, 0) AS tenant FROM jobs
          WHERE state IN ('queued', 'running')) a
    LEFT JOIN tenants t ON t.token_id = a.tenant
    ORDER BY a.tenant";

/// A tenant's open chunks, from its queued and running jobs' counters (never its chunks).
pub(crate) const OPEN_CHUNKS_SQL: &str = "
    SELECT COALESCE(SUM(chunk_count - chunks_done - chunks_failed), 0) FROM jobs
    WHERE owner_token_id = $1 AND state IN ('queued', 'running')";

/// A tenant's stored module bytes (no row: none).
pub(crate) const MODULE_BYTES_SQL: &str = "SELECT module_bytes FROM tenants WHERE token_id = $1";

/// A token's settings: `$1` the token id; no row when there is no such token.
pub(crate) const TENANT_SQL: &str = "
    SELECT COALESCE(s.weight, 1) AS weight, s.max_open_chunks, s.max_module_bytes,
           s.max_submissions_per_minute
    FROM tokens t LEFT JOIN tenants s ON s.token_id = t.id
    WHERE t.id = $1";

/// Replace a token's settings (`$1` id, `$2` weight, `$3`..`$5` limits, `$6` now); no row is
/// written when there is no such token.
pub(crate) const SET_TENANT_SQL: &str = "
    INSERT INTO tenants (token_id, weight, max_open_chunks, max_module_bytes,
                         max_submissions_per_minute, updated_at)
    SELECT id, $2, $3, $4, $5, $6 FROM tokens WHERE id = $1
    ON CONFLICT (token_id) DO UPDATE
    SET weight = excluded.weight, max_open_chunks = excluded.max_open_chunks,
        max_module_bytes = excluded.max_module_bytes,
        max_submissions_per_minute = excluded.max_submissions_per_minute,
        updated_at = excluded.updated_at";

/// Count a new module's `$2` bytes against tenant `$1` unless its modules would exceed `$3`
/// (NULL: no limit). Returns the new total, or no row when refused. The caller has checked
/// `$2 <= $3` (a tenant's first module inserts its row without the condition).
pub(crate) const CHARGE_MODULE_SQL: &str = "
    INSERT INTO tenants (token_id, module_bytes) VALUES ($1, $2)
    ON CONFLICT (token_id) DO UPDATE SET module_bytes = tenants.module_bytes + excluded.module_bytes
    WHERE $3 IS NULL OR tenants.module_bytes + excluded.module_bytes <= $3
    RETURNING module_bytes";

/// Give a deleted module's `$2` bytes back to tenant `$1`.
pub(crate) const REFUND_MODULE_SQL: &str = "
    UPDATE tenants
    SET module_bytes = CASE WHEN module_bytes > $2 THEN module_bytes - $2 ELSE 0 END
    WHERE token_id = $1";

/// A queued or running job that runs module `$1` (reads `jobs_active_by_program`).
pub(crate) const MODULE_IN_USE_SQL: &str = "
    SELECT id FROM jobs WHERE kernel = $1 AND state IN ('queued', 'running') LIMIT 1";

/// The oldest finished job that still holds results and finished before `$1`: its id, whether
/// its results are expired already, and whether its credit is settled.
pub(crate) const RETENTION_CANDIDATE_SQL: &str = "
    SELECT j.id, j.results_expired_at IS NOT NULL AS expired,
           EXISTS (SELECT 1 FROM credited_jobs c WHERE c.job_id = j.id) AS settled
    FROM jobs j
    WHERE j.finished_at IS NOT NULL AND j.results_purged_at IS NULL AND j.finished_at < $1
      AND j.state IN ('done', 'failed', 'cancelled')
    ORDER BY j.finished_at LIMIT 1";

/// Expire job `$1`'s results at `$2`, keeping its replica counters on the job row (the view
/// shows them once the replicas are gone).
pub(crate) const EXPIRE_RESULTS_SQL: &str = "
    UPDATE jobs SET results_expired_at = $2,
        (kept_replicas_issued, kept_replicas_returned, kept_replicas_invalid,
         kept_replicas_expired) = (
            SELECT count(*),
                   COALESCE(SUM(CASE WHEN r.state = 'returned' THEN 1 ELSE 0 END), 0),
                   COALESCE(SUM(CASE WHEN r.verdict = 'invalid' THEN 1 ELSE 0 END), 0),
                   COALESCE(SUM(CASE WHEN r.state = 'expired' THEN 1 ELSE 0 END), 0)
            FROM replicas r WHERE r.job_id = $1 AND NOT r.ringer)
    WHERE id = $1 AND results_expired_at IS NULL";

/// Delete at most `$2` replicas of job `$1`.
pub(crate) const DELETE_REPLICAS_SQL: &str = "
    DELETE FROM replicas WHERE id IN (SELECT id FROM replicas WHERE job_id = $1 LIMIT $2)";

/// Delete at most `$2` decided chunks of job `$1` (a chunk reopened meanwhile stays).
pub(crate) const DELETE_CHUNKS_SQL: &str = "
    DELETE FROM chunks WHERE job_id = $1
      AND idx IN (SELECT idx FROM chunks WHERE job_id = $1 AND state <> 'open' LIMIT $2)";

/// Note at `$2` that job `$1` holds no more results.
pub(crate) const PURGED_SQL: &str = "
    UPDATE jobs SET results_purged_at = $2
    WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM chunks WHERE job_id = $1)";

/// Ready chunks one tenant's share of a load may bring: the load's limit split evenly over the
/// tenants with work, at least one each.
pub(crate) fn per_tenant_limit(limit: i64, tenants: usize) -> i64 {
    (limit / i64::try_from(tenants.max(1)).unwrap_or(i64::MAX)).max(1)
}

/// Fill in each chunk's [`Share`] from its tenant: the weight, and whether the load brought as
/// many of the tenant's chunks as its share allowed (then the database may hold more).
pub(crate) fn mark_shares(chunks: &mut [ReadyChunk], weights: &HashMap<i64, u32>, per_tenant: i64) {
    let mut loaded: HashMap<i64, i64> = HashMap::new();
    for chunk in chunks.iter() {
        *loaded.entry(chunk.share.tenant).or_default() += 1;
    }
    for chunk in chunks.iter_mut() {
        let tenant = chunk.share.tenant;
        chunk.share = Share {
            tenant,
            weight: weights.get(&tenant).copied().unwrap_or(1),
            more_ready: loaded.get(&tenant).copied().unwrap_or(0) >= per_tenant,
        };
    }
}

/// The tenant key of a job owner (`NULL` for the admin).
pub(crate) fn tenant_of(owner_token_id: Option<i64>) -> i64 {
    owner_token_id.unwrap_or(ADMIN_TENANT)
}

/// A stored weight as a [`Share`] weight.
pub(crate) fn weight_of(stored: i32) -> u32 {
    u32::try_from(stored.clamp(1, super::MAX_WEIGHT)).unwrap_or(1)
}

/// The replica counters of a job view: the live ones, or those kept when the job's results
/// expired (its replicas are deleted then).
pub(crate) fn kept_or_live<R>(row: &R, live: ReplicaCounts) -> Result<ReplicaCounts, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let kept = |column: &str| row.try_get::<Option<i64>, _>(column);
    Ok(match kept("kept_replicas_issued")? {
        None => live,
        Some(issued) => ReplicaCounts {
            issued,
            returned: kept("kept_replicas_returned")?.unwrap_or(0),
            invalid: kept("kept_replicas_invalid")?.unwrap_or(0),
            expired: kept("kept_replicas_expired")?.unwrap_or(0),
        },
    })
}

/// A row of [`TENANT_SQL`].
pub(crate) fn settings<R>(row: &R) -> Result<TenantSettings, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(TenantSettings {
        weight: row.try_get("weight")?,
        max_open_chunks: row.try_get("max_open_chunks")?,
        max_module_bytes: row.try_get("max_module_bytes")?,
        max_submissions_per_minute: row.try_get("max_submissions_per_minute")?,
    })
}

/// A job names a module that is not stored (or was deleted while it was being submitted).
pub(crate) fn unknown_module(module: &str) -> Error {
    Error::invalid(
        "unknown_module",
        format!("no module `{module}` has been uploaded (POST /api/v1/modules)"),
    )
}
