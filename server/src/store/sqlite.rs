//! The embedded store: SQLite in one file under the data directory, used when no
//! `DATABASE_URL` is configured. Same tables, same rules, same verifier as PostgreSQL.
//!
//! SQLite has one writer at a time and no network round trip, so a commit here is a loop of
//! cheap prepared statements inside one transaction rather than set-based `UNNEST` updates;
//! the group commit still makes it one fsync per scheduler round. The pool holds a single
//! connection so writers never contend for the lock. WAL journal with `synchronous = FULL`:
//! a committed round survives a crash of the process or of the machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use grid_protocol::states::{ChunkState, JobState, Verdict, Verification};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use super::commit::{ChangedReplica, CommitTx, commit_batch};
use super::counters::ReplicaTally;
use super::error::{Quota, Result, StoreError};
use super::{
    Batch, BatchOutcome, Cancellation, ChunkCounts, ChunkResult, ExpirySweep, ExportClaim, JobView,
    LeaseEnd, LeaseRequest, MasterCheckCandidate, ModuleDeletion, NewJob, Owner, PortableStore,
    Program, ReadyChunk, ReplicaCounts, ResultSubmission, RetentionStep, Store,
};
use crate::trust::review::{
    Accepted, ChunkKey, ChunkRow, JobDelta, ReplicaRow, ReputationDelta, ReviewDb, digest_of,
};
use crate::trust::verifier::QuorumPolicy;

/// SQLite-backed [`Store`].
/// The `holders` column of a ready chunk `c`, as a JSON array (see the PostgreSQL store).
macro_rules! holders_column {
    () => {
        "(SELECT json_group_array(h.holder) FROM (
            SELECT r.worker_id AS holder FROM replicas r
            WHERE r.job_id = c.job_id AND r.chunk_idx = c.idx
              AND (r.state IN ('leased', 'returned')
                   OR (r.origin IS NOT NULL AND r.state <> 'revoked'))
            UNION
            SELECT r.origin FROM replicas r
            WHERE r.job_id = c.job_id AND r.chunk_idx = c.idx
              AND r.state <> 'revoked' AND r.origin IS NOT NULL) AS h) AS holders"
    };
}

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating if needed) `grid.db` in `data_dir` and apply pending migrations.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(data_dir.join("grid.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// Write an online, consistent copy of the embedded database in `data_dir` to `to`, while
    /// a master may be running on it (`VACUUM INTO`: one read transaction, so the copy is the
    /// database as of one commit, and writers go on meanwhile thanks to the WAL journal). The
    /// copy is written beside `to` under a temporary name and renamed into place when complete,
    /// so `to` is either absent or a whole database; an existing `to` is refused. Returns the
    /// copy's size in bytes.
    pub async fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<u64> {
        let source = data_dir.join("grid.db");
        if !source.exists() {
            anyhow::bail!("no embedded database at {}", source.display());
        }
        if to.exists() {
            anyhow::bail!("{} exists already: give a new file", to.display());
        }
        let file_name = to
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{} is not a file name", to.display()))?;
        let partial = to.with_file_name(format!(".{}.partial", file_name.to_string_lossy()));
        let _ = std::fs::remove_file(&partial);
        let partial_text = partial
            .to_str()
            .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", partial.display()))?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&source)
            .read_only(true)
            .busy_timeout(Duration::from_secs(30));
        let mut connection =
            <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options).await?;
        let copied = sqlx::query("VACUUM INTO ?1")
            .bind(partial_text)
            .execute(&mut connection)
            .await;
        let _ = sqlx::Connection::close(connection).await;
        if let Err(error) = copied {
            let _ = std::fs::remove_file(&partial);
            return Err(error.into());
        }
        std::fs::File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, to)?;
        Ok(std::fs::metadata(to)?.len())
    }

    /// The connection pool (tests use it to look inside).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A job view reads the job's row alone: its replica counters are kept there by the commit
/// (see [`super::counters`]).
const JOB_VIEW_SELECT: &str = "
    SELECT j.id, j.name, j.kernel, j.timeout_ms, j.max_memory_mb, j.module_output, j.state, j.redundancy,
           j.max_replicas, j.priority, j.lease_seconds, j.chunk_count, j.chunks_done, j.chunks_failed,
           j.verification, j.chunks_revised,
           j.created_at, j.started_at, j.finished_at, j.results_deleted_at,
           j.replicas_issued AS issued, j.replicas_returned AS returned,
           j.replicas_invalid AS invalid, j.replicas_expired AS expired,
           j.sink, j.export_state, j.export_attempts, j.export_error, j.export_version,
           j.exported_at
    FROM jobs j";

fn job_view(row: &SqliteRow) -> Result<JobView, sqlx::Error> {
    let (kernel, module) = super::split_program(row.try_get("kernel")?);
    Ok(JobView {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kernel,
        module,
        timeout_ms: row.try_get("timeout_ms")?,
        max_memory_mb: row.try_get("max_memory_mb")?,
        output: row.try_get("module_output")?,
        state: row.try_get("state")?,
        redundancy: row.try_get("redundancy")?,
        max_replicas: row.try_get("max_replicas")?,
        priority: row.try_get("priority")?,
        lease_seconds: row.try_get("lease_seconds")?,
        verification: row.try_get("verification")?,
        chunks: ChunkCounts {
            total: row.try_get("chunk_count")?,
            done: row.try_get("chunks_done")?,
            failed: row.try_get("chunks_failed")?,
            revised: row.try_get("chunks_revised")?,
        },
        replicas: ReplicaCounts {
            issued: row.try_get("issued")?,
            returned: row.try_get("returned")?,
            invalid: row.try_get("invalid")?,
            expired: row.try_get("expired")?,
        },
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        results_deleted_at: row.try_get("results_deleted_at")?,
        export: super::export_view(row)?,
    })
}

fn owner_filter(owner: Owner) -> (bool, i64) {
    match owner {
        Owner::Admin => (true, 0),
        Owner::Submitter(id) => (false, id),
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

super::portable::portable_store_methods!(SqliteStore, SqliteBatch);

#[async_trait]
impl Store for SqliteStore {
    async fn revoke_token(&self, id: i64) -> Result<Option<bool>> {
        let mut tx = self.pool.begin().await?;
        let live: Option<bool> =
            sqlx::query_scalar("SELECT revoked_at IS NULL FROM tokens WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if live == Some(true) {
            sqlx::query("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1")
                .bind(id)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(live)
    }

    async fn create_job(
        &self,
        owner: Owner,
        job: NewJob,
        max_open_chunks: Option<u64>,
    ) -> Result<JobView> {
        let owner_id = match owner {
            Owner::Admin => None,
            Owner::Submitter(id) => Some(id),
        };
        // One connection, one writer: nothing else runs between the checks and the insert.
        let mut tx = self.pool.begin().await?;
        if let (Some(limit), Some(token)) = (max_open_chunks, owner_id) {
            let used: i64 = sqlx::query_scalar(super::OPEN_CHUNKS_SQL)
                .bind(token)
                .fetch_one(&mut *tx)
                .await?;
            let used = u64::try_from(used).unwrap_or(0);
            let requested = job.inputs.len() as u64;
            if used.saturating_add(requested) > limit {
                return Err(StoreError::QuotaExceeded {
                    quota: Quota::OpenChunks,
                    limit,
                    used,
                    requested,
                });
            }
        }
        if let Program::Module { id, .. } = &job.program {
            let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM modules WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(StoreError::UnknownModule(id.clone()));
            }
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (owner_token_id, name, kernel, redundancy, max_replicas, priority,
                               lease_seconds, chunk_count, created_at, verification,
                               timeout_ms, max_memory_mb, module_output, sink, export_state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                     CASE WHEN ?14 IS NULL THEN NULL ELSE 'pending' END)
             RETURNING id",
        )
        .bind(owner_id)
        .bind(&job.name)
        .bind(job.program.stored_name())
        .bind(job.redundancy)
        .bind(job.max_replicas)
        .bind(job.priority)
        .bind(job.lease_seconds)
        .bind(job.inputs.len() as i64)
        .bind(Utc::now())
        .bind(job.verification)
        .bind(job.program.stored_limits().0)
        .bind(job.program.stored_limits().1)
        .bind(job.program.stored_output())
        .bind(&job.sink)
        .fetch_one(&mut *tx)
        .await?;
        let initial_wanted = job.initial_wanted();
        for (idx, input) in job.inputs.iter().enumerate() {
            sqlx::query(
                "INSERT INTO chunks (job_id, idx, priority, input, wanted)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(id)
            .bind(idx as i64)
            .bind(job.priority)
            .bind(input)
            .bind(initial_wanted)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.job(owner, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(anyhow::anyhow!("job {id} vanished after insert")))
    }

    async fn cancel_job(&self, owner: Owner, id: i64) -> Result<Option<Cancellation>> {
        let (is_admin, owner_id) = owner_filter(owner);
        let mut tx = self.pool.begin().await?;
        let state: Option<JobState> = sqlx::query_scalar(
            "SELECT state FROM jobs WHERE id = ?1 AND (?2 OR owner_token_id = ?3)",
        )
        .bind(id)
        .bind(is_admin)
        .bind(owner_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(state) = state else {
            return Ok(None);
        };
        let cancelled = !state.is_finished();
        let mut revoked = Vec::new();
        if cancelled {
            revoked = sqlx::query_scalar(
                "UPDATE replicas SET state = 'revoked'
                 WHERE job_id = ?1 AND state = 'leased' RETURNING id",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE chunks SET state = 'cancelled', wanted = 0
                 WHERE job_id = ?1 AND state = 'open'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2,
                                 export_state = CASE WHEN export_state = 'pending' THEN 'skipped'
                                                     ELSE export_state END
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let job = self
            .job(owner, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(anyhow::anyhow!("job {id} vanished on cancel")))?;
        Ok(Some(Cancellation {
            job,
            cancelled,
            revoked,
        }))
    }

    async fn results_page(
        &self,
        job_id: i64,
        after: i32,
        max_rows: i64,
        max_bytes: i64,
    ) -> Result<Vec<ChunkResult>> {
        let sizes: Vec<(i32, i64)> = sqlx::query_as(super::RESULT_SIZES_SQL)
            .bind(job_id)
            .bind(after)
            .bind(max_rows)
            .fetch_all(&self.pool)
            .await?;
        let Some(end) = super::results_page_end(&sizes, max_bytes) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(super::RESULT_ROWS_SQL)
            .bind(job_id)
            .bind(after)
            .bind(end)
            .fetch_all(&self.pool)
            .await?;
        let results = rows
            .iter()
            .map(super::chunk_result)
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(results)
    }

    async fn revoked_leases_of(
        &self,
        jobs: &[i64],
        master_id: &str,
    ) -> Result<Vec<grid_protocol::LeaseId>> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM replicas
             WHERE job_id IN (SELECT value FROM json_each(?1)) AND master_id = ?2 AND state = 'revoked'",
        )
        .bind(serde_json::to_string(jobs).unwrap_or_else(|_| "[]".into()))
        .bind(master_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    async fn blacklisted_among(&self, worker_ids: &[String]) -> Result<Vec<String>> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM workers
             WHERE id IN (SELECT value FROM json_each(?1)) AND blacklisted_at IS NOT NULL",
        )
        .bind(serde_json::to_string(worker_ids).unwrap_or_else(|_| "[]".into()))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    async fn put_module(
        &self,
        owner: Owner,
        id: &str,
        bytes: &[u8],
        max_bytes: Option<u64>,
    ) -> Result<bool> {
        let uploaded_by = match owner {
            Owner::Admin => None,
            Owner::Submitter(token) => Some(token),
        };
        let uploader = super::uploader(owner);
        let mut tx = self.pool.begin().await?;
        if let Some(limit) = max_bytes.filter(|_| uploaded_by.is_some()) {
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM module_uploads WHERE module_id = ?1 AND uploader = ?2",
            )
            .bind(id)
            .bind(uploader)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                let used: i64 = sqlx::query_scalar(super::HELD_MODULE_BYTES_SQL)
                    .bind(uploader)
                    .fetch_one(&mut *tx)
                    .await?;
                let used = u64::try_from(used).unwrap_or(0);
                let requested = bytes.len() as u64;
                if used.saturating_add(requested) > limit {
                    return Err(StoreError::QuotaExceeded {
                        quota: Quota::ModuleBytes,
                        limit,
                        used,
                        requested,
                    });
                }
            }
        }
        let now = Utc::now();
        let inserted = sqlx::query(
            "INSERT INTO modules (id, bytes, size, uploaded_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(bytes)
        .bind(bytes.len() as i64)
        .bind(uploaded_by)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "INSERT INTO module_uploads (module_id, uploader, size, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(uploader)
        .bind(bytes.len() as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(inserted > 0)
    }

    async fn delete_module(&self, owner: Owner, id: &str) -> Result<ModuleDeletion> {
        let mut tx = self.pool.begin().await?;
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM modules WHERE id = ?1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Ok(ModuleDeletion::NotFound);
        }
        let (others, token) = match owner {
            Owner::Admin => (0, 0),
            Owner::Submitter(token) => {
                let dropped = sqlx::query(
                    "DELETE FROM module_uploads WHERE module_id = ?1 AND uploader = ?2",
                )
                .bind(id)
                .bind(token)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if dropped == 0 {
                    return Ok(ModuleDeletion::NotFound);
                }
                let others: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM module_uploads WHERE module_id = ?1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                (others, token)
            }
        };
        let bytes_go = others == 0;
        let in_use: bool = sqlx::query_scalar(super::MODULE_IN_USE_SQL)
            .bind(id)
            .bind(bytes_go)
            .bind(token)
            .fetch_one(&mut *tx)
            .await?;
        if in_use {
            return Ok(ModuleDeletion::InUse);
        }
        if bytes_go {
            sqlx::query("DELETE FROM modules WHERE id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ModuleDeletion::Deleted {
            bytes_removed: bytes_go,
        })
    }

    async fn retention_candidates(&self, cutoff: DateTime<Utc>, limit: i64) -> Result<Vec<i64>> {
        // Timestamps are text here: compare them as instants, whatever their precision.
        let jobs = sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE finished_at IS NOT NULL AND results_purged_at IS NULL
               AND julianday(finished_at) < julianday(?1)
               AND state IN ('done', 'failed', 'cancelled')
               AND (export_state IS NULL OR export_state <> 'pending')
             ORDER BY julianday(finished_at) LIMIT ?2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(jobs)
    }

    async fn retention_step(
        &self,
        job: i64,
        cutoff: DateTime<Utc>,
        batch_rows: i64,
    ) -> Result<RetentionStep> {
        let mut tx = self.pool.begin().await?;
        let marked: Option<bool> = sqlx::query_scalar(
            "SELECT results_deleted_at IS NOT NULL FROM jobs
             WHERE id = ?1 AND julianday(finished_at) < julianday(?2)
               AND results_purged_at IS NULL AND state IN ('done', 'failed', 'cancelled')",
        )
        .bind(job)
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await?;
        let now = Utc::now();
        let step = match marked {
            None => RetentionStep::Skipped,
            Some(false) => {
                // Settle the job's credit from the replicas about to go, then mark it.
                let claimed = sqlx::query(
                    "INSERT INTO credited_jobs (job_id, credited_at) VALUES (?1, ?2)
                     ON CONFLICT DO NOTHING",
                )
                .bind(job)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if claimed == 1 {
                    sqlx::query(&super::insights::settle_job_sql(false))
                        .bind(job)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("UPDATE jobs SET results_deleted_at = ?2 WHERE id = ?1")
                    .bind(job)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                RetentionStep::Marked
            }
            Some(true) => {
                let mut deleted = sqlx::query(
                    "DELETE FROM replicas WHERE id IN (
                         SELECT id FROM replicas WHERE job_id = ?1 LIMIT ?2)",
                )
                .bind(job)
                .bind(batch_rows)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if deleted == 0 {
                    deleted = sqlx::query(
                        "DELETE FROM chunks WHERE job_id = ?1 AND idx IN (
                             SELECT idx FROM chunks WHERE job_id = ?1 ORDER BY idx LIMIT ?2)",
                    )
                    .bind(job)
                    .bind(batch_rows)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                if deleted == 0 {
                    sqlx::query("UPDATE jobs SET results_purged_at = ?2 WHERE id = ?1")
                        .bind(job)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    RetentionStep::Purged
                } else {
                    RetentionStep::Deleted(deleted)
                }
            }
        };
        tx.commit().await?;
        Ok(step)
    }

    async fn claim_export(&self, master_id: &str) -> Result<Option<ExportClaim>> {
        // One master per embedded database: a claim by another id is a previous process's,
        // which died mid-export.
        let row = sqlx::query(
            "UPDATE jobs SET export_master = ?1, export_attempts = export_attempts + 1
             WHERE id = (
                 SELECT j.id FROM jobs j
                 WHERE j.export_state = 'pending' AND j.state IN ('done', 'failed')
                   AND (j.export_not_before IS NULL
                        OR julianday(j.export_not_before) <= julianday(?2))
                   AND (j.export_master IS NULL OR j.export_master <> ?1)
                 ORDER BY j.id LIMIT 1)
             RETURNING id, sink, export_attempts",
        )
        .bind(master_id)
        .bind(Utc::now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|row| -> Result<ExportClaim, sqlx::Error> {
                Ok(ExportClaim {
                    job_id: row.try_get("id")?,
                    sink: row.try_get("sink")?,
                    attempt: row.try_get("export_attempts")?,
                })
            })
            .transpose()?)
    }
}

type Tx = Transaction<'static, Sqlite>;

/// Ready-chunk rows (job_id, idx, priority, kernel, input, lease_seconds, wanted, holders as a
/// JSON array) as dispatch cache entries.
fn ready_rows(rows: &[SqliteRow]) -> Result<Vec<ReadyChunk>> {
    let mut tasks: HashMap<i64, Arc<grid_protocol::Task>> = HashMap::new();
    let mut chunks = Vec::with_capacity(rows.len());
    for row in rows {
        let job_id: i64 = row.try_get("job_id")?;
        let task = match tasks.get(&job_id) {
            Some(task) => task.clone(),
            None => {
                let task = Arc::new(super::stored_task(
                    row.try_get("kernel")?,
                    row.try_get("timeout_ms")?,
                    row.try_get("max_memory_mb")?,
                    row.try_get("module_output")?,
                )?);
                tasks.insert(job_id, task.clone());
                task
            }
        };
        let input: String = row.try_get("input")?;
        let holders: String = row.try_get("holders")?;
        let stored = |error: serde_json::Error| {
            StoreError::Corrupt(anyhow::anyhow!("stored chunk data: {error}"))
        };
        chunks.push(ReadyChunk {
            job_id,
            idx: row.try_get("idx")?,
            priority: row.try_get("priority")?,
            task,
            input: Arc::new(serde_json::from_str(&input).map_err(stored)?),
            lease_seconds: row.try_get("lease_seconds")?,
            wanted: row.try_get("wanted")?,
            holders: serde_json::from_str(&holders).map_err(stored)?,
            tenant: row.try_get("tenant")?,
            weight: row.try_get("weight")?,
        });
    }
    Ok(chunks)
}

/// An open SQLite transaction as a commit and its review see it: a statement per row (one
/// writer at a time, no round trips: the database is in this process).
struct SqliteBatch<'t> {
    tx: &'t mut Tx,
    /// The replica counters' changes of this commit.
    tally: ReplicaTally,
}

impl<'t> SqliteBatch<'t> {
    fn new(tx: &'t mut Tx) -> Self {
        SqliteBatch {
            tx,
            tally: ReplicaTally::default(),
        }
    }
}

#[async_trait]
impl CommitTx for SqliteBatch<'_> {
    fn tally(&mut self) -> &mut ReplicaTally {
        &mut self.tally
    }

    async fn record_workers(&mut self, seen: &[(Arc<str>, &'static str)]) -> Result<()> {
        let now = Utc::now();
        for (worker_id, kind) in seen {
            sqlx::query(
                "INSERT INTO workers (id, kind, first_seen, last_seen) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, last_seen = excluded.last_seen",
            )
            .bind(&**worker_id)
            .bind(*kind)
            .bind(now)
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }

    async fn record_results(
        &mut self,
        results: &[ResultSubmission],
    ) -> Result<Vec<ChangedReplica>> {
        let now = Utc::now();
        let mut stored = Vec::with_capacity(results.len());
        for result in results {
            let row = sqlx::query(
                "UPDATE replicas
                 SET state = 'returned', returned_at = $3, outcome_digest = $4,
                     outcome_is_error = $5, outcome = $6
                 WHERE id = $1 AND worker_id = $2 AND state = 'leased'
                 RETURNING id, job_id, chunk_idx, ringer, state",
            )
            .bind(result.lease)
            .bind(&*result.worker_id)
            .bind(now)
            .bind(&result.digest[..])
            .bind(result.is_error)
            .bind(&result.text)
            .fetch_optional(&mut **self.tx)
            .await?;
            if let Some(row) = row {
                stored.push(changed_replica(&row)?);
            }
        }
        Ok(stored)
    }

    async fn end_leases(&mut self, ended: &[(i64, LeaseEnd)]) -> Result<Vec<ChangedReplica>> {
        let mut closed = Vec::with_capacity(ended.len());
        for (lease, end) in ended {
            let row = sqlx::query(
                "UPDATE replicas SET state = $2 WHERE id = $1 AND state = 'leased'
                 RETURNING id, job_id, chunk_idx, ringer, state",
            )
            .bind(lease)
            .bind(end.state())
            .fetch_optional(&mut **self.tx)
            .await?;
            if let Some(row) = row {
                closed.push(changed_replica(&row)?);
            }
        }
        Ok(closed)
    }

    async fn sweep_expired(
        &mut self,
        sweep: ExpirySweep,
        _master_id: &str,
    ) -> Result<Vec<ChangedReplica>> {
        let before = match sweep {
            ExpirySweep::None => return Ok(Vec::new()),
            ExpirySweep::Overdue => now_ms(),
            ExpirySweep::Startup => i64::MAX,
        };
        // Leases past their deadline are the worker's doing ('expired': that worker and its
        // network never get the chunk again); the previous process's leases at start-up are
        // the master's ('revoked': they free their origin). One master per embedded database:
        // no heartbeat to keep.
        let rows = sqlx::query(
            "UPDATE replicas
             SET state = CASE WHEN deadline_ms < $2 THEN 'expired' ELSE 'revoked' END
             WHERE state = 'leased' AND deadline_ms < $1
             RETURNING id, job_id, chunk_idx, ringer, state",
        )
        .bind(before)
        .bind(now_ms())
        .fetch_all(&mut **self.tx)
        .await?;
        rows.iter().map(changed_replica).collect()
    }

    async fn claim_replicas(
        &mut self,
        wanted: &BTreeMap<ChunkKey, i32>,
    ) -> Result<BTreeSet<ChunkKey>> {
        let mut claimed = BTreeSet::new();
        for (&(job_id, idx), &n) in wanted {
            let changed = sqlx::query(
                "UPDATE chunks SET wanted = wanted - $3
                 WHERE job_id = $1 AND idx = $2 AND state = 'open' AND wanted >= $3",
            )
            .bind(job_id)
            .bind(idx)
            .bind(n)
            .execute(&mut **self.tx)
            .await?
            .rows_affected();
            if changed == 1 {
                claimed.insert((job_id, idx));
            }
        }
        Ok(claimed)
    }

    async fn insert_leases(
        &mut self,
        requests: &[&LeaseRequest],
        master_id: &str,
    ) -> Result<Vec<Option<i64>>> {
        let now = Utc::now();
        let now_ms = now_ms();
        let mut leases = Vec::with_capacity(requests.len());
        for request in requests {
            // A ringer from a stale pool whose chunk the retention deleted is not granted.
            let lease: Option<i64> = sqlx::query_scalar(
                "INSERT INTO replicas
                     (job_id, chunk_idx, worker_id, issued_at, deadline_ms, master_id, ringer,
                      origin)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8
                 WHERE NOT $7 OR EXISTS (SELECT 1 FROM chunks WHERE job_id = $1 AND idx = $2)
                 ON CONFLICT DO NOTHING
                 RETURNING id",
            )
            .bind(request.job_id)
            .bind(request.idx)
            .bind(&*request.worker_id)
            .bind(now)
            .bind(now_ms + i64::from(request.lease_seconds) * 1000)
            .bind(master_id)
            .bind(request.ringer)
            .bind(request.origin.as_deref())
            .fetch_optional(&mut **self.tx)
            .await?;
            leases.push(lease);
        }
        Ok(leases)
    }

    async fn mark_started(&mut self, jobs: &BTreeSet<i64>) -> Result<()> {
        let now = Utc::now();
        for job_id in jobs {
            sqlx::query(
                "UPDATE jobs SET state = 'running', started_at = $2
                 WHERE id = $1 AND state = 'queued'",
            )
            .bind(job_id)
            .bind(now)
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }

    async fn count_replicas(&mut self) -> Result<()> {
        for (job, delta) in self.tally.deltas() {
            sqlx::query(
                "UPDATE jobs
                 SET replicas_issued = replicas_issued + $2,
                     replicas_returned = replicas_returned + $3,
                     replicas_invalid = replicas_invalid + $4,
                     replicas_expired = replicas_expired + $5
                 WHERE id = $1",
            )
            .bind(job)
            .bind(delta.issued)
            .bind(delta.returned)
            .bind(delta.invalid)
            .bind(delta.expired)
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }
}

/// A row of `RETURNING id, job_id, chunk_idx, ringer, state` on `replicas`.
fn changed_replica(row: &SqliteRow) -> Result<ChangedReplica> {
    Ok(ChangedReplica {
        lease: row.try_get("id")?,
        chunk: (row.try_get("job_id")?, row.try_get("chunk_idx")?),
        ringer: row.try_get("ringer")?,
        state: row.try_get("state")?,
    })
}

#[async_trait]
impl ReviewDb for SqliteBatch<'_> {
    async fn load_chunks(
        &mut self,
        keys: &BTreeSet<ChunkKey>,
    ) -> Result<BTreeMap<ChunkKey, ChunkRow>> {
        let mut chunks = BTreeMap::new();
        for &(job_id, idx) in keys {
            let Some(row) = sqlx::query(
                "SELECT c.state, c.wanted, c.quorum, c.output_digest,
                        j.redundancy, j.max_replicas, j.verification,
                        j.kernel LIKE 'sha256:%' AS module
                 FROM chunks c JOIN jobs j ON j.id = c.job_id
                 WHERE c.job_id = ?1 AND c.idx = ?2",
            )
            .bind(job_id)
            .bind(idx)
            .fetch_optional(&mut **self.tx)
            .await?
            else {
                continue;
            };
            let redundancy: i64 = row.try_get("redundancy")?;
            let max_replicas: i64 = row.try_get("max_replicas")?;
            let quorum: Option<i64> = row.try_get("quorum")?;
            let verification: Verification = row.try_get("verification")?;
            chunks.insert(
                (job_id, idx),
                ChunkRow {
                    state: row.try_get("state")?,
                    wanted: row.try_get("wanted")?,
                    policy: QuorumPolicy {
                        redundancy: u32::try_from(redundancy).unwrap_or(1),
                        max_replicas: u32::try_from(max_replicas).unwrap_or(1),
                        adaptive: verification == Verification::Adaptive,
                        quorum: quorum.and_then(|q| u32::try_from(q).ok()),
                    },
                    output_digest: digest_of(row.try_get("output_digest")?),
                    module: row.try_get("module")?,
                },
            );
        }
        Ok(chunks)
    }

    async fn load_replicas(&mut self, keys: &BTreeSet<ChunkKey>) -> Result<Vec<ReplicaRow>> {
        let mut replicas = Vec::new();
        for &(job_id, idx) in keys {
            let rows = sqlx::query(
                "SELECT id, worker_id, state, outcome_digest, outcome_is_error, ringer, verdict, origin,
                        (SELECT w.kind FROM workers w WHERE w.id = replicas.worker_id) AS kind
                 FROM replicas WHERE job_id = ?1 AND chunk_idx = ?2",
            )
            .bind(job_id)
            .bind(idx)
            .fetch_all(&mut **self.tx)
            .await?;
            for row in rows {
                replicas.push(ReplicaRow {
                    lease: row.try_get("id")?,
                    chunk: (job_id, idx),
                    worker_id: row.try_get("worker_id")?,
                    state: row.try_get("state")?,
                    digest: digest_of(row.try_get("outcome_digest")?),
                    is_error: row
                        .try_get::<Option<bool>, _>("outcome_is_error")?
                        .unwrap_or(false),
                    ringer: row.try_get("ringer")?,
                    verdict: row.try_get("verdict")?,
                    origin: row.try_get("origin")?,
                    kind: row.try_get("kind")?,
                });
            }
        }
        Ok(replicas)
    }

    async fn load_standings(
        &mut self,
        workers: &BTreeSet<String>,
    ) -> Result<HashMap<String, (i64, bool)>> {
        let mut standings = HashMap::with_capacity(workers.len());
        for worker in workers {
            let row = sqlx::query(
                "SELECT consecutive_valid, blacklisted_at IS NOT NULL AS blacklisted
                 FROM workers WHERE id = ?1",
            )
            .bind(worker)
            .fetch_optional(&mut **self.tx)
            .await?;
            if let Some(row) = row {
                standings.insert(
                    worker.clone(),
                    (
                        row.try_get("consecutive_valid")?,
                        row.try_get("blacklisted")?,
                    ),
                );
            }
        }
        Ok(standings)
    }

    async fn accept(&mut self, accepted: &[Accepted]) -> Result<()> {
        let now = Utc::now();
        for chunk in accepted {
            sqlx::query(
                "UPDATE chunks
                 SET state = CASE WHEN ?4 THEN 'failed' ELSE 'done' END,
                     wanted = 0, agreeing = ?3, finished_at = ?5,
                     output = CASE WHEN ?4 THEN NULL ELSE
                         (SELECT outcome FROM replicas WHERE id = ?6) END,
                     error = CASE WHEN ?4 THEN
                         (SELECT outcome FROM replicas WHERE id = ?6) ELSE NULL END,
                     output_digest = ?7, quorum = COALESCE(?8, quorum),
                     accepted_alone_by = ?9
                 WHERE job_id = ?1 AND idx = ?2",
            )
            .bind(chunk.chunk.0)
            .bind(chunk.chunk.1)
            .bind(chunk.agreeing)
            .bind(chunk.is_error)
            .bind(now)
            .bind(chunk.canonical)
            .bind(&chunk.digest[..])
            .bind(chunk.quorum)
            .bind(chunk.alone_by.as_deref())
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }

    async fn fail(&mut self, failed: &[(ChunkKey, String)]) -> Result<()> {
        let now = Utc::now();
        for ((job_id, idx), reason) in failed {
            sqlx::query(
                "UPDATE chunks SET state = 'failed', wanted = 0, error = ?3, finished_at = ?4
                 WHERE job_id = ?1 AND idx = ?2",
            )
            .bind(job_id)
            .bind(idx)
            .bind(reason)
            .bind(now)
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }

    async fn set_wanted(&mut self, wanted: &[(ChunkKey, i32, Option<i32>)]) -> Result<()> {
        for ((job_id, idx), count, quorum) in wanted {
            sqlx::query(
                "UPDATE chunks SET wanted = ?3, quorum = COALESCE(?4, quorum)
                 WHERE job_id = ?1 AND idx = ?2",
            )
            .bind(job_id)
            .bind(idx)
            .bind(count)
            .bind(quorum)
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }

    async fn set_verdicts(&mut self, verdicts: &[(i64, Verdict)]) -> Result<()> {
        for &(lease, now) in verdicts {
            // One writer at a time here: the verdict read first is the one replaced.
            let before: Option<(i64, bool, Option<Verdict>)> =
                sqlx::query_as("SELECT job_id, ringer, verdict FROM replicas WHERE id = ?1")
                    .bind(lease)
                    .fetch_optional(&mut **self.tx)
                    .await?;
            sqlx::query("UPDATE replicas SET verdict = ?2 WHERE id = ?1")
                .bind(lease)
                .bind(now)
                .execute(&mut **self.tx)
                .await?;
            if let Some((job, ringer, was)) = before {
                self.tally.verdict(job, ringer, was, Some(now));
            }
        }
        Ok(())
    }

    async fn revoke_live(&mut self, keys: &[ChunkKey]) -> Result<Vec<i64>> {
        let mut revoked = Vec::new();
        for (job_id, idx) in keys {
            let leases: Vec<i64> = sqlx::query_scalar(
                "UPDATE replicas SET state = 'revoked'
                 WHERE job_id = ?1 AND chunk_idx = ?2 AND state = 'leased' AND NOT ringer
                 RETURNING id",
            )
            .bind(job_id)
            .bind(idx)
            .fetch_all(&mut **self.tx)
            .await?;
            revoked.extend(leases);
        }
        Ok(revoked)
    }

    async fn count_jobs(&mut self, per_job: &BTreeMap<i64, JobDelta>) -> Result<()> {
        let now = Utc::now();
        for (job_id, delta) in per_job {
            sqlx::query(
                "UPDATE jobs
                 SET state = CASE
                         WHEN state = 'cancelled' THEN state
                         WHEN chunks_done + ?2 + chunks_failed + ?3 < chunk_count THEN 'running'
                         WHEN chunks_failed + ?3 > 0 THEN 'failed'
                         ELSE 'done' END,
                     finished_at = CASE
                         WHEN state = 'cancelled' THEN finished_at
                         WHEN chunks_done + ?2 + chunks_failed + ?3 < chunk_count THEN NULL
                         ELSE ?5 END,
                     chunks_done = chunks_done + ?2,
                     chunks_failed = chunks_failed + ?3,
                     chunks_revised = chunks_revised + ?4
                 WHERE id = ?1",
            )
            .bind(job_id)
            .bind(delta.done)
            .bind(delta.failed)
            .bind(delta.revised)
            .bind(now)
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }

    async fn update_reputation(
        &mut self,
        deltas: &BTreeMap<String, ReputationDelta>,
    ) -> Result<HashMap<String, i64>> {
        let mut totals = HashMap::with_capacity(deltas.len());
        for (worker, delta) in deltas {
            let total: Option<i64> = sqlx::query_scalar(
                "UPDATE workers
                 SET valid_count = valid_count + ?2,
                     invalid_count = MAX(invalid_count + ?3 - ?6, 0),
                     consecutive_valid = CASE WHEN ?3 > 0 THEN 0
                                              ELSE consecutive_valid + ?4 END
                 WHERE id = ?1
                 RETURNING invalid_count - valid_count / ?5",
            )
            .bind(worker)
            .bind(delta.valid)
            .bind(delta.invalid)
            .bind(delta.vouched)
            .bind(crate::trust::VALID_RESULTS_PER_FORGIVEN_INVALID)
            .bind(delta.forgiven)
            .fetch_optional(&mut **self.tx)
            .await?;
            if let Some(total) = total {
                totals.insert(worker.clone(), total);
            }
        }
        Ok(totals)
    }

    async fn blacklist(&mut self, workers: &BTreeMap<String, String>) -> Result<()> {
        let now = Utc::now();
        for (worker, reason) in workers {
            sqlx::query(
                "UPDATE workers SET blacklisted_at = ?2, blacklist_reason = ?3
                 WHERE id = ?1 AND blacklisted_at IS NULL",
            )
            .bind(worker)
            .bind(now)
            .bind(reason)
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }

    async fn unblacklist(&mut self, workers: &[String]) -> Result<Vec<String>> {
        let mut lifted = Vec::new();
        for worker in workers {
            let changed = sqlx::query(
                "UPDATE workers SET blacklisted_at = NULL, blacklist_reason = NULL
                 WHERE id = $1 AND blacklisted_at IS NOT NULL
                   AND blacklist_reason NOT LIKE $2 || '%'",
            )
            .bind(worker)
            .bind(crate::trust::PROVEN_LIE)
            .execute(&mut **self.tx)
            .await?
            .rows_affected();
            if changed > 0 {
                lifted.push(worker.clone());
            }
        }
        Ok(lifted)
    }

    async fn withdraw_invalid(
        &mut self,
        chunks: &[ChunkKey],
        except: &str,
    ) -> Result<BTreeMap<String, i32>> {
        let mut withdrawn: BTreeMap<String, i32> = BTreeMap::new();
        for &(job_id, idx) in chunks {
            let workers: Vec<String> = sqlx::query_scalar(
                "UPDATE replicas SET verdict = NULL
                 WHERE job_id = $1 AND chunk_idx = $2 AND verdict = 'invalid' AND NOT ringer
                   AND worker_id <> $3
                 RETURNING worker_id",
            )
            .bind(job_id)
            .bind(idx)
            .bind(except)
            .fetch_all(&mut **self.tx)
            .await?;
            for worker in workers {
                self.tally
                    .verdict(job_id, false, Some(Verdict::Invalid), None);
                *withdrawn.entry(worker).or_default() += 1;
            }
        }
        Ok(withdrawn)
    }

    async fn set_master_checked(&mut self, checks: &[(ChunkKey, bool)]) -> Result<()> {
        for &((job_id, idx), agreed) in checks {
            sqlx::query(
                "UPDATE chunks SET master_checked = $3,
                     ringer_key = CASE WHEN $3 = 'agreed'
                                       THEN random() / 18446744073709551616.0 + 0.5 END
                 WHERE job_id = $1 AND idx = $2 AND state = 'done'",
            )
            .bind(job_id)
            .bind(idx)
            .bind(if agreed { "agreed" } else { "disagreed" })
            .execute(&mut **self.tx)
            .await?;
        }
        Ok(())
    }

    async fn backtrack(
        &mut self,
        worker: &str,
    ) -> Result<(Vec<(ChunkKey, bool)>, Vec<(i64, ChunkKey)>)> {
        let rows = sqlx::query(
            "SELECT c.job_id, c.idx, c.state FROM chunks c
             WHERE c.state IN ('done', 'failed')
               -- A cancelled job is nobody's any more: never revive its chunks.
               -- Nor one whose results the retention deletes.
               AND NOT EXISTS (SELECT 1 FROM jobs cj
                               WHERE cj.id = c.job_id
                                 AND (cj.state = 'cancelled'
                                      OR cj.results_deleted_at IS NOT NULL))
               AND (c.accepted_alone_by = ?1
                    OR EXISTS (SELECT 1 FROM replicas r
                               WHERE r.job_id = c.job_id AND r.chunk_idx = c.idx
                                 AND r.worker_id = ?1 AND r.verdict = 'valid'
                                 AND NOT r.ringer))",
        )
        .bind(worker)
        .fetch_all(&mut **self.tx)
        .await?;
        let mut chunks = Vec::with_capacity(rows.len());
        for row in rows {
            let key: ChunkKey = (row.try_get("job_id")?, row.try_get("idx")?);
            let was: ChunkState = row.try_get("state")?;
            sqlx::query(
                "UPDATE chunks
                 SET state = 'open', wanted = 0, output = NULL, error = NULL, agreeing = NULL,
                     output_digest = NULL, accepted_alone_by = NULL, finished_at = NULL,
                     revised = revised + 1,
                     quorum = (SELECT CASE WHEN verification = 'adaptive' THEN redundancy END
                               FROM jobs WHERE id = ?1)
                 WHERE job_id = ?1 AND idx = ?2",
            )
            .bind(key.0)
            .bind(key.1)
            .execute(&mut **self.tx)
            .await?;
            chunks.push((key, was == ChunkState::Failed));
        }
        let judged: Vec<i64> = sqlx::query_scalar(
            "UPDATE replicas SET verdict = 'invalid'
             WHERE worker_id = ?1 AND state = 'returned' AND NOT ringer
               AND (verdict = 'valid' OR verdict IS NULL)
             RETURNING job_id",
        )
        .bind(worker)
        .fetch_all(&mut **self.tx)
        .await?;
        for job in judged {
            // From valid or none to invalid: one more either way.
            self.tally.verdict(job, false, None, Some(Verdict::Invalid));
        }
        let rows = sqlx::query(
            "UPDATE replicas SET state = 'revoked'
             WHERE worker_id = ?1 AND state = 'leased' RETURNING id, job_id, chunk_idx",
        )
        .bind(worker)
        .fetch_all(&mut **self.tx)
        .await?;
        let mut revoked = Vec::with_capacity(rows.len());
        for row in rows {
            revoked.push((
                row.try_get("id")?,
                (row.try_get("job_id")?, row.try_get("chunk_idx")?),
            ));
        }
        Ok((chunks, revoked))
    }
}
