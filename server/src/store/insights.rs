//! Read-mostly queries for people watching the grid, kept apart from [`Store`] (which the
//! scheduler and the verifier own) so the two evolve independently.
//!
//! - [`Insights`]: what the dashboard, the job events stream, the chunk map, the Mandelbrot
//!   image and the volunteers' credit read, plus the display names volunteers choose for
//!   themselves (the only thing written here). Implemented below for [`PgStore`] and
//!   [`SqliteStore`] with the same SQL where the dialects allow.
//! - [`Database`]: a store that does both, which is what [`crate::serve`] takes.
//!
//! Nothing here is on the hot path of results: every query is either indexed and small (a job's
//! row, a job's chunks decided since a cursor) or cached by its caller (credit, see
//! [`crate::dashboard`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use grid_protocol::states::{ChunkState, JobState};
use serde::Serialize;
use sqlx::Row;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{ChunkCounts, Owner, Store};
use crate::store::Result;

/// A job's progress, from its row alone (no replica counts: cheap enough to poll).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct JobProgress {
    /// Job id.
    pub id: i64,
    /// Optional human name.
    pub name: Option<String>,
    /// Kernel name, or the module id (`sha256:...`) of a module job.
    pub kernel: String,
    /// Where the job is in its life.
    pub state: JobState,
    /// Chunk counters.
    pub chunks: ChunkCounts,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When its first lease was issued.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobProgress {
    /// Whether the job reached a final state.
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

/// A decided chunk, without its output (events and reconciliation need only this).
#[derive(Debug, Clone, PartialEq)]
pub struct DecidedChunk {
    /// Chunk index.
    pub index: i32,
    /// Done (accepted) or failed.
    pub state: ChunkState,
    /// Distinct workers that agreed, when accepted.
    pub agreeing: Option<i32>,
    /// Why it failed, when failed.
    pub error: Option<String>,
    /// When it was decided (the events stream's cursor).
    pub finished_at: DateTime<Utc>,
}

/// One volunteer's credit: verified work, measured in milliseconds of computing.
#[derive(Debug, Clone, PartialEq)]
pub struct Credit {
    /// The worker identity (never shown to others: it is what proves who the volunteer is).
    pub worker_id: String,
    /// The name the volunteer chose, if any.
    pub display_name: Option<String>,
    /// Valid results returned.
    pub results: i64,
    /// Sum over those results of their chunk's compute time (see [`Insights::credits`]).
    pub credit_ms: f64,
}

/// Letters of [`Insights::chunk_map`], one per chunk.
pub mod map_letter {
    /// Open, waiting for a worker.
    pub const WAITING: u8 = b'o';
    /// Open, with at least one live lease.
    pub const RUNNING: u8 = b'r';
    /// Accepted.
    pub const DONE: u8 = b'd';
    /// Failed.
    pub const FAILED: u8 = b'f';
    /// Cancelled with its job.
    pub const CANCELLED: u8 = b'c';
}

/// What people watching the grid read; see the module documentation.
#[async_trait]
pub trait Insights: Send + Sync + std::fmt::Debug + 'static {
    /// A job visible to `owner`, from its row alone.
    async fn job_progress(&self, owner: Owner, id: i64) -> Result<Option<JobProgress>>;
    /// Jobs visible to `owner`, newest first.
    async fn recent_jobs(&self, owner: Owner, limit: i64) -> Result<Vec<JobProgress>>;
    /// Decided chunks of a job after the cursor `(finished_at, index)`, in that order (all of
    /// them without a cursor).
    async fn decided_since(
        &self,
        job_id: i64,
        after: Option<(DateTime<Utc>, i32)>,
        limit: i64,
    ) -> Result<Vec<DecidedChunk>>;
    /// Decided chunks of a job with index > `after`, in index order.
    async fn decided_page(&self, job_id: i64, after: i32, limit: i64) -> Result<Vec<DecidedChunk>>;
    /// One letter of [`map_letter`] per chunk of a job, in index order.
    async fn chunk_map(&self, job_id: i64) -> Result<Vec<u8>>;
    /// The canonical JSON input of one chunk.
    async fn chunk_input(&self, job_id: i64, idx: i32) -> Result<Option<String>>;
    /// Every volunteer's credit, highest first (blacklisted identities excluded).
    ///
    /// A valid replica earns its chunk's compute time: the shortest time from lease to result
    /// among the chunk's valid replicas. The wire protocol carries no compute time a worker
    /// could inflate; lease-to-result time includes queueing in a worker's prefetch and
    /// slow machines, and taking the chunk's fastest agreeing replica measures the work
    /// itself, so every volunteer that computed a chunk earns the same for it (as BOINC
    /// grants one credit per workunit).
    ///
    /// Finished jobs are settled first (their credit added to `volunteer_credit` once, in one
    /// transaction with their `credited_jobs` row); jobs not settled are added up live. A
    /// settled job's credit does not change afterwards (results revised or spot-checked later
    /// do not move it).
    async fn credits(&self) -> Result<Vec<Credit>>;
    /// The display name a volunteer chose.
    async fn display_name(&self, worker_id: &str) -> Result<Option<String>>;
    /// Set (or with `None`, clear) a volunteer's display name. Validation is the caller's.
    async fn set_display_name(&self, worker_id: &str, name: Option<&str>) -> Result<()>;
}

/// A store for the scheduler and the watchers alike: what [`crate::serve`] takes.
pub trait Database: Store + Insights {}

impl<T: Store + Insights> Database for T {}

fn owner_filter(owner: Owner) -> (bool, i64) {
    match owner {
        Owner::Admin => (true, 0),
        Owner::Submitter(id) => (false, id),
    }
}

/// The columns of [`JobProgress`]; the same on both backends.
const PROGRESS_SELECT: &str = "
    SELECT id, name, kernel, state, chunk_count, chunks_done, chunks_failed, chunks_revised,
           created_at, started_at, finished_at
    FROM jobs";

/// The columns of a [`DecidedChunk`]. The error is cut to its first
/// [`crate::limits::EVENT_ERROR_CHARS`] characters in the database, so a page of a thousand
/// decisions stays small whatever the errors (the whole text is in the results).
const DECIDED_COLUMNS: &str = "idx, state, agreeing, substr(error, 1, 256) AS error, finished_at";

fn progress<R>(row: &R) -> Result<JobProgress, sqlx::Error>
where
    R: Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> JobState: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(JobProgress {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kernel: row.try_get("kernel")?,
        state: row.try_get("state")?,
        chunks: ChunkCounts {
            total: i64::from(row.try_get::<i32, _>("chunk_count")?),
            done: i64::from(row.try_get::<i32, _>("chunks_done")?),
            failed: i64::from(row.try_get::<i32, _>("chunks_failed")?),
            revised: i64::from(row.try_get::<i32, _>("chunks_revised")?),
        },
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn decided<R>(row: &R) -> Result<DecidedChunk, sqlx::Error>
where
    R: Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> ChunkState: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(DecidedChunk {
        index: row.try_get("idx")?,
        state: row.try_get("state")?,
        agreeing: row.try_get("agreeing")?,
        error: row.try_get("error")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn map_letter(state: ChunkState, leased: bool) -> u8 {
    match state {
        ChunkState::Done => map_letter::DONE,
        ChunkState::Failed => map_letter::FAILED,
        ChunkState::Cancelled => map_letter::CANCELLED,
        ChunkState::Open if leased => map_letter::RUNNING,
        ChunkState::Open => map_letter::WAITING,
    }
}

/// Finished jobs whose credit is not settled yet (see the `credited_jobs` migration).
const UNSETTLED_JOBS_SQL: &str = "
    SELECT j.id FROM jobs j
    WHERE j.state IN ('done', 'failed', 'cancelled')
      AND NOT EXISTS (SELECT 1 FROM credited_jobs c WHERE c.job_id = j.id)
    ORDER BY j.id LIMIT 100";

/// Jobs whose credit is added up live: those not settled yet.
const UNSETTLED_FILTER: &str = "job_id IN (
    SELECT j.id FROM jobs j WHERE NOT EXISTS (SELECT 1 FROM credited_jobs c WHERE c.job_id = j.id))";

/// Lease-to-result milliseconds of a replica, in PostgreSQL.
const MS_POSTGRES: &str =
    "GREATEST(EXTRACT(EPOCH FROM (returned_at - issued_at)) * 1000, 0)::float8";
/// The same in SQLite (timestamps are RFC 3339 text there).
const MS_SQLITE: &str = "MAX((julianday(returned_at) - julianday(issued_at)) * 86400000.0, 0.0)";

/// Per worker, valid results and credit of the replicas `filter` selects: each valid replica
/// earns the shortest lease-to-result time among its chunk's valid replicas, capped at
/// [`CREDIT_CAP_FACTOR`] times the median of those times over the job's chunks. Spot-check
/// replicas (ringers) are left out: they feed reputation, not credit.
///
/// The cap is what keeps credit from being inflated by holding leases (review M10): a pair of
/// colluders who hold both replicas of a chunk and answer just before the deadline would
/// otherwise be credited the whole lease. A job's median is set by the majority of its chunks,
/// so it moves only if colluders hold both replicas of half the job's chunks, which the
/// distinct-network rule makes as hard as capturing half the quorums.
fn credit_per_worker(ms: &str, filter: &str) -> String {
    format!(
        "WITH valid AS (
            SELECT job_id, chunk_idx, worker_id, {ms} AS ms
            FROM replicas
            WHERE verdict = 'valid' AND NOT ringer AND returned_at IS NOT NULL AND {filter}
        ), per_chunk AS (
            SELECT job_id, chunk_idx, min(ms) AS ms FROM valid GROUP BY job_id, chunk_idx
        ), ranked AS (
            SELECT job_id, ms,
                   ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY ms) AS position,
                   COUNT(*) OVER (PARTITION BY job_id) AS chunks
            FROM per_chunk
        ), job_median AS (
            SELECT job_id, ms AS median_ms FROM ranked WHERE position = (chunks + 1) / 2
        ), capped AS (
            SELECT p.job_id, p.chunk_idx,
                   CASE WHEN p.ms > {CREDIT_CAP_FACTOR} * m.median_ms
                        THEN {CREDIT_CAP_FACTOR} * m.median_ms ELSE p.ms END AS ms
            FROM per_chunk p JOIN job_median m ON m.job_id = p.job_id
        )
        SELECT v.worker_id, count(*) AS results, sum(c.ms) AS credit_ms
        FROM valid v JOIN capped c ON c.job_id = v.job_id AND c.chunk_idx = v.chunk_idx
        GROUP BY v.worker_id"
    )
}

/// A chunk earns at most this many times its job's median chunk time (see
/// [`credit_per_worker`]). Generous, so honest chunks that really take longer than most
/// (a job's ranges are rarely equal work) keep most of their credit.
pub const CREDIT_CAP_FACTOR: f64 = 4.0;

/// Add one job's credit to `volunteer_credit` (the caller has claimed the job).
fn settle_sql(ms: &str, job_param: &str) -> String {
    format!(
        "INSERT INTO volunteer_credit (worker_id, results, credit_ms)
         SELECT worker_id, results, credit_ms FROM ({}) AS job_credit WHERE true
         ON CONFLICT (worker_id) DO UPDATE
         SET results = volunteer_credit.results + excluded.results,
             credit_ms = volunteer_credit.credit_ms + excluded.credit_ms",
        credit_per_worker(ms, &format!("job_id = {job_param}"))
    )
}

/// The statement that adds one job's credit to `volunteer_credit` (the job is `$1`, which
/// SQLite reads as `?1` too), for the retention: it settles a job before deleting its replicas,
/// with the same claim on `credited_jobs` as [`Insights::credits`].
pub(crate) fn settle_job_sql(postgres: bool) -> String {
    if postgres {
        settle_sql(MS_POSTGRES, "$1")
    } else {
        settle_sql(MS_SQLITE, "?1")
    }
}

/// Settled credit plus the live credit of unsettled jobs, per volunteer, highest first.
fn credits_sql(ms: &str, integer: &str, real: &str) -> String {
    format!(
        "WITH live AS ({}),
         total AS (
            SELECT worker_id, sum(results) AS results, sum(credit_ms) AS credit_ms
            FROM (SELECT worker_id, results, credit_ms FROM volunteer_credit
                  UNION ALL SELECT worker_id, results, credit_ms FROM live) AS parts
            GROUP BY worker_id
         )
         SELECT t.worker_id, n.display_name, CAST(t.results AS {integer}) AS results,
                CAST(t.credit_ms AS {real}) AS credit_ms
         FROM total t
         LEFT JOIN volunteer_names n ON n.worker_id = t.worker_id
         LEFT JOIN workers w ON w.id = t.worker_id
         WHERE w.blacklisted_at IS NULL AND t.results > 0
         ORDER BY credit_ms DESC, t.worker_id",
        credit_per_worker(ms, UNSETTLED_FILTER)
    )
}

/// [`Insights`] for `$store`: the same code on both backends (portable `$N` SQL, times bound
/// from Rust), with the dialect's milliseconds expression `$ms` and its integer and real type
/// names for the credit query's casts.
macro_rules! insights_for {
    ($store:ident, ms = $ms:expr, integer = $integer:literal, real = $real:literal) => {
        #[async_trait]
        impl Insights for $store {
            async fn job_progress(&self, owner: Owner, id: i64) -> Result<Option<JobProgress>> {
                let (is_admin, owner_id) = owner_filter(owner);
                let sql = format!("{PROGRESS_SELECT} WHERE id = $1 AND ($2 OR owner_token_id = $3)");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .bind(is_admin)
                    .bind(owner_id)
                    .fetch_optional(self.pool())
                    .await?;
                Ok(row.as_ref().map(progress).transpose()?)
            }

            async fn recent_jobs(&self, owner: Owner, limit: i64) -> Result<Vec<JobProgress>> {
                let (is_admin, owner_id) = owner_filter(owner);
                let sql = format!(
                    "{PROGRESS_SELECT} WHERE ($1 OR owner_token_id = $2) ORDER BY id DESC LIMIT $3"
                );
                let rows = sqlx::query(&sql)
                    .bind(is_admin)
                    .bind(owner_id)
                    .bind(limit)
                    .fetch_all(self.pool())
                    .await?;
                Ok(rows.iter().map(progress).collect::<Result<_, _>>()?)
            }

            async fn decided_since(
                &self,
                job_id: i64,
                after: Option<(DateTime<Utc>, i32)>,
                limit: i64,
            ) -> Result<Vec<DecidedChunk>> {
                let rows = match after {
                    Some((at, idx)) => {
                        sqlx::query(&format!(
                            "SELECT {DECIDED_COLUMNS} FROM chunks
                             WHERE job_id = $1 AND finished_at IS NOT NULL AND state IN ('done', 'failed')
                               AND (finished_at, idx) > ($2, $3)
                             ORDER BY finished_at, idx LIMIT $4"
                        ))
                        .bind(job_id)
                        .bind(at)
                        .bind(idx)
                        .bind(limit)
                        .fetch_all(self.pool())
                        .await?
                    }
                    None => {
                        sqlx::query(&format!(
                            "SELECT {DECIDED_COLUMNS} FROM chunks
                             WHERE job_id = $1 AND finished_at IS NOT NULL AND state IN ('done', 'failed')
                             ORDER BY finished_at, idx LIMIT $2"
                        ))
                        .bind(job_id)
                        .bind(limit)
                        .fetch_all(self.pool())
                        .await?
                    }
                };
                Ok(rows.iter().map(decided).collect::<Result<_, _>>()?)
            }

            async fn decided_page(&self, job_id: i64, after: i32, limit: i64) -> Result<Vec<DecidedChunk>> {
                let rows = sqlx::query(&format!(
                    "SELECT {DECIDED_COLUMNS} FROM chunks
                     WHERE job_id = $1 AND idx > $2 AND state IN ('done', 'failed')
                       AND finished_at IS NOT NULL
                     ORDER BY idx LIMIT $3"
                ))
                .bind(job_id)
                .bind(after)
                .bind(limit)
                .fetch_all(self.pool())
                .await?;
                Ok(rows.iter().map(decided).collect::<Result<_, _>>()?)
            }

            async fn chunk_map(&self, job_id: i64) -> Result<Vec<u8>> {
                let rows: Vec<(ChunkState, bool)> = sqlx::query_as(
                    "SELECT c.state,
                            c.state = 'open' AND EXISTS (
                                SELECT 1 FROM replicas r
                                WHERE r.job_id = c.job_id AND r.chunk_idx = c.idx AND r.state = 'leased')
                     FROM chunks c WHERE c.job_id = $1 ORDER BY c.idx",
                )
                .bind(job_id)
                .fetch_all(self.pool())
                .await?;
                Ok(rows
                    .iter()
                    .map(|(state, leased)| map_letter(*state, *leased))
                    .collect())
            }

            async fn chunk_input(&self, job_id: i64, idx: i32) -> Result<Option<String>> {
                let input = sqlx::query_scalar("SELECT input FROM chunks WHERE job_id = $1 AND idx = $2")
                    .bind(job_id)
                    .bind(idx)
                    .fetch_optional(self.pool())
                    .await?;
                Ok(input)
            }

            async fn credits(&self) -> Result<Vec<Credit>> {
                let unsettled: Vec<i64> = sqlx::query_scalar(UNSETTLED_JOBS_SQL)
                    .fetch_all(self.pool())
                    .await?;
                for job in unsettled {
                    let mut tx = self.pool().begin().await?;
                    // Whoever inserts the row settles the job; another master waits, then skips it.
                    // (SQLite timestamps are RFC 3339 text in one format, UTC `+00:00`, so the
                    // `(finished_at, idx)` comparisons of `decided_since` order them by time there too.)
                    let claimed = sqlx::query(
                        "INSERT INTO credited_jobs (job_id, credited_at) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(job)
                    .bind(Utc::now())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if claimed == 1 {
                        sqlx::query(&settle_sql($ms, "$1"))
                            .bind(job)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    }
                }
                let rows: Vec<(String, Option<String>, i64, f64)> =
                    sqlx::query_as(&credits_sql($ms, $integer, $real))
                        .fetch_all(self.pool())
                        .await?;
                Ok(rows.into_iter().map(credit).collect())
            }

            async fn display_name(&self, worker_id: &str) -> Result<Option<String>> {
                let name =
                    sqlx::query_scalar("SELECT display_name FROM volunteer_names WHERE worker_id = $1")
                        .bind(worker_id)
                        .fetch_optional(self.pool())
                        .await?;
                Ok(name)
            }

            async fn set_display_name(&self, worker_id: &str, name: Option<&str>) -> Result<()> {
                match name {
                    Some(name) => {
                        sqlx::query(
                            "INSERT INTO volunteer_names (worker_id, display_name, updated_at)
                             VALUES ($1, $2, $3)
                             ON CONFLICT (worker_id)
                             DO UPDATE SET display_name = excluded.display_name,
                                           updated_at = excluded.updated_at",
                        )
                        .bind(worker_id)
                        .bind(name)
                        .bind(Utc::now())
                        .execute(self.pool())
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM volunteer_names WHERE worker_id = $1")
                            .bind(worker_id)
                            .execute(self.pool())
                            .await?;
                    }
                }
                Ok(())
            }
        }
    };
}

insights_for!(
    PgStore,
    ms = MS_POSTGRES,
    integer = "BIGINT",
    real = "DOUBLE PRECISION"
);
insights_for!(
    SqliteStore,
    ms = MS_SQLITE,
    integer = "INTEGER",
    real = "REAL"
);

fn credit(
    (worker_id, display_name, results, credit_ms): (String, Option<String>, i64, f64),
) -> Credit {
    Credit {
        worker_id,
        display_name,
        results,
        credit_ms,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decided_chunks_read_errors_cut_to_the_event_limit() {
        let cut = format!(
            "substr(error, 1, {}) AS error",
            crate::limits::EVENT_ERROR_CHARS
        );
        assert!(
            super::DECIDED_COLUMNS.contains(&cut),
            "{}",
            super::DECIDED_COLUMNS
        );
    }
}
