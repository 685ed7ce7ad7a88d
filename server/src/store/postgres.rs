//! The PostgreSQL store. Each scheduler round is one transaction made of a handful of
//! set-based statements (`UNNEST` over arrays), whatever the number of results, leases and
//! expiries in it: that is the group commit the throughput depends on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use grid_protocol::states::{ChunkState, JobState, Verdict, Verification};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::commit::{ChangedReplica, CommitTx, commit_batch};
use super::counters::ReplicaTally;
use super::error::{Quota, Result, StoreError};
use super::primary::{self, PgHosts};
use super::{
    Batch, BatchOutcome, Cancellation, ChunkCounts, ChunkResult, ExpirySweep, ExportClaim, JobView,
    LeaseEnd, LeaseRequest, MASTER_TIMEOUT_SECONDS, MasterCheckCandidate, ModuleDeletion, NewJob,
    Owner, PortableStore, Program, ReadyChunk, ReplicaCounts, ResultSubmission, RetentionStep,
    Store,
};
use crate::trust::review::{
    Accepted, ChunkKey, ChunkRow, JobDelta, ReplicaRow, ReputationDelta, ReviewDb, digest_of,
};
use crate::trust::verifier::QuorumPolicy;

/// Rows per `INSERT ... SELECT FROM UNNEST` when storing a job's chunks.
const CHUNK_INSERT_BATCH: usize = 20_000;

/// PostgreSQL-backed [`Store`].
/// The `holders` column of a ready chunk `c`: identities with a live or returned replica, and
/// every identity and origin with a replica an untrusted network did not get revoked (see the
/// `independence` migration).
macro_rules! holders_column {
    () => {
        "ARRAY(SELECT h.holder FROM replicas r,
                    LATERAL (VALUES (r.worker_id), (r.origin)) AS h(holder)
              WHERE r.job_id = c.job_id AND r.chunk_idx = c.idx
                AND (r.state IN ('leased', 'returned')
                     OR (r.origin IS NOT NULL AND r.state <> 'revoked'))
                AND h.holder IS NOT NULL) AS holders"
    };
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl std::fmt::Debug for PgStore {
    // The pool's options include the database URL and its password: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect and apply pending migrations.
    ///
    /// `database_url` may name several hosts (`postgres://u@h1:5432,h2:5432/grid`, see
    /// [`super::primary`]): the store connects to the one that is the primary and follows the
    /// primary to another host after a failover, for as long as the runtime runs. Whatever the
    /// hosts, no connection to a standby is ever used.
    pub async fn connect(database_url: &str) -> anyhow::Result<Self> {
        let hosts = PgHosts::parse(database_url)?;
        let first = if hosts.options.len() == 1 {
            0
        } else {
            hosts.find_primary().await.ok_or_else(|| {
                anyhow::anyhow!(
                    "none of the database hosts {} is a reachable primary",
                    hosts.names.join(", ")
                )
            })?
        };
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(|connection, _| {
                Box::pin(async move {
                    if primary::in_recovery(connection).await? {
                        // An I/O error, so that the store reads it as "unavailable, retry".
                        return Err(sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "the database server is a standby (read-only); a master needs the primary",
                        )));
                    }
                    Ok(())
                })
            })
            .connect_with(hosts.options[first].clone())
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        if hosts.options.len() > 1 {
            tokio::spawn(primary::follow_primary(pool.clone(), hosts, first));
        }
        Ok(PgStore { pool })
    }

    /// One attempt at cancelling: `None` when the job is not visible to `owner`, else whether
    /// it was cancelled now and the leases revoked.
    async fn try_cancel(
        &self,
        owner: Owner,
        id: i64,
    ) -> Result<Option<(bool, Vec<i64>)>, sqlx::Error> {
        let (is_admin, owner_id) = owner_filter(owner);
        let mut tx = self.pool.begin().await?;
        let state: Option<JobState> = sqlx::query_scalar(
            "SELECT state FROM jobs WHERE id = $1 AND ($2 OR owner_token_id = $3)",
        )
        .bind(id)
        .bind(is_admin)
        .bind(owner_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(state) = state else {
            return Ok(None);
        };
        if state.is_finished() {
            return Ok(Some((false, Vec::new())));
        }
        let revoked: Vec<i64> = sqlx::query_scalar(
            "UPDATE replicas SET state = 'revoked'
             WHERE id IN (SELECT id FROM replicas WHERE job_id = $1 AND state = 'leased'
                          ORDER BY id FOR UPDATE)
             RETURNING id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE chunks SET state = 'cancelled', wanted = 0
             WHERE (job_id, idx) IN (SELECT job_id, idx FROM chunks
                                     WHERE job_id = $1 AND state = 'open'
                                     ORDER BY idx FOR UPDATE)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = now(),
                             export_state = CASE WHEN export_state = 'pending' THEN 'skipped'
                                                 ELSE export_state END
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            // It finished while we revoked: nothing to cancel after all.
            tx.rollback().await?;
            return Ok(Some((false, Vec::new())));
        }
        tx.commit().await?;
        Ok(Some((true, revoked)))
    }

    /// The connection pool (tests use it to look inside).
    pub fn pool(&self) -> &PgPool {
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

fn job_view(row: &PgRow) -> Result<JobView, sqlx::Error> {
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
            total: i64::from(row.try_get::<i32, _>("chunk_count")?),
            done: i64::from(row.try_get::<i32, _>("chunks_done")?),
            failed: i64::from(row.try_get::<i32, _>("chunks_failed")?),
            revised: i64::from(row.try_get::<i32, _>("chunks_revised")?),
        },
        replicas: ReplicaCounts {
            issued: row.try_get("issued")?,
            returned: row.try_get("returned")?,
            invalid: row.try_get("invalid")?,
            expired: row.try_get("expired")?,
        },
        created_at: row.try_get::<DateTime<Utc>, _>("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        results_deleted_at: row.try_get("results_deleted_at")?,
        export: super::export_view(row)?,
    })
}

/// `(is_admin, owner_token_id)` parameters for the visibility filter.
fn owner_filter(owner: Owner) -> (bool, i64) {
    match owner {
        Owner::Admin => (true, 0),
        Owner::Submitter(id) => (false, id),
    }
}

super::portable::portable_store_methods!(PgStore, PgBatch);

#[async_trait]
impl Store for PgStore {
    fn watch_changes(&self) -> Option<tokio::sync::mpsc::Receiver<super::Change>> {
        Some(super::changes::spawn(self.pool.clone()))
    }

    async fn advertise_master(&self, master_id: &str, url: Option<&str>) -> Result<()> {
        sqlx::query(
            "INSERT INTO masters (id, url) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, heartbeat_at = now()",
        )
        .bind(master_id)
        .bind(url)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn live_masters(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query_as(
            "SELECT id, url FROM masters
             WHERE url IS NOT NULL AND heartbeat_at > now() - $1 * interval '1 second'
             ORDER BY started_at, id",
        )
        .bind(MASTER_TIMEOUT_SECONDS as f64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn revoke_token(&self, id: i64) -> Result<Option<bool>> {
        let revoked: Option<bool> = sqlx::query_scalar(
            "WITH before AS (SELECT id, revoked_at IS NULL AS live FROM tokens WHERE id = $1)
             UPDATE tokens t SET revoked_at = COALESCE(t.revoked_at, now())
             FROM before WHERE t.id = before.id RETURNING before.live",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(revoked)
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
        let chunk_count = i32::try_from(job.inputs.len())
            .map_err(|_| StoreError::TooLarge("too many inputs".into()))?;
        let mut tx = self.pool.begin().await?;
        if let (Some(limit), Some(token)) = (max_open_chunks, owner_id) {
            // The tenant's lock first (its other submissions wait here until this one is
            // stored or refused), then its open chunks from its unfinished jobs' counters.
            lock_tenant(&mut tx, token).await?;
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
            // Held until the job is stored: a concurrent deletion of the module waits for it
            // and then sees the job (see `delete_module`).
            let found: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM modules WHERE id = $1 FOR SHARE")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Err(StoreError::UnknownModule(id.clone()));
            }
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (owner_token_id, name, kernel, redundancy, max_replicas, priority,
                               lease_seconds, chunk_count, verification, timeout_ms, max_memory_mb,
                               module_output, sink, export_state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                     CASE WHEN $13::text IS NULL THEN NULL ELSE 'pending' END)
             RETURNING id",
        )
        .bind(owner_id)
        .bind(&job.name)
        .bind(job.program.stored_name())
        .bind(job.redundancy)
        .bind(job.max_replicas)
        .bind(job.priority)
        .bind(job.lease_seconds)
        .bind(chunk_count)
        .bind(job.verification)
        .bind(job.program.stored_limits().0)
        .bind(job.program.stored_limits().1)
        .bind(job.program.stored_output())
        .bind(&job.sink)
        .fetch_one(&mut *tx)
        .await?;
        let initial_wanted = job.initial_wanted();
        for (batch_number, inputs) in job.inputs.chunks(CHUNK_INSERT_BATCH).enumerate() {
            let first = batch_number * CHUNK_INSERT_BATCH;
            let indexes: Vec<i32> = (first..first + inputs.len())
                .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
                .collect();
            sqlx::query(
                "INSERT INTO chunks (job_id, idx, priority, input, wanted)
                 SELECT $1, t.idx, $2, t.input, $3
                 FROM UNNEST($4::int[], $5::text[]) AS t(idx, input)",
            )
            .bind(id)
            .bind(job.priority)
            .bind(initial_wanted)
            .bind(&indexes)
            .bind(inputs)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if job.inputs.len() >= CHUNK_INSERT_BATCH {
            // Fresh statistics after a big insert keep the dispatch and review plans on their
            // indexes (autovacuum would catch up only later).
            sqlx::query("ANALYZE chunks").execute(&self.pool).await?;
        }
        self.job(owner, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(anyhow::anyhow!("job {id} vanished after insert")))
    }

    async fn cancel_job(&self, owner: Owner, id: i64) -> Result<Option<Cancellation>> {
        // The scheduler's commit locks replicas, then chunks, then jobs; so does this, and a
        // deadlock with a commit touching the same job (PostgreSQL aborts one side) is retried.
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.try_cancel(owner, id).await {
                Err(sqlx::Error::Database(error))
                    if attempt < 5
                        && matches!(error.code().as_deref(), Some("40P01" | "40001")) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                }
                other => break other?,
            }
        };
        let Some((cancelled, revoked)) = outcome else {
            return Ok(None);
        };
        let view = self
            .job(owner, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(anyhow::anyhow!("job {id} vanished on cancel")))?;
        Ok(Some(Cancellation {
            job: view,
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
        // The statistics of a big job are those its insert took (`ANALYZE` after it: every
        // chunk open) until autovacuum catches up, so the planner believes no chunk of it is
        // finished and scans the whole table for each page: 0.7 s a page, 6 minutes for the
        // export of 1,000,000 chunks (measured). The primary key (job_id, idx) serves these
        // reads in order and stops after a page; the planner is told to take it.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('enable_seqscan', 'off', true),
                    set_config('enable_bitmapscan', 'off', true),
                    set_config('enable_sort', 'off', true),
                    set_config('max_parallel_workers_per_gather', '0', true),
                    set_config('jit', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        let sizes: Vec<(i32, i64)> = sqlx::query_as(super::RESULT_SIZES_SQL)
            .bind(job_id)
            .bind(after)
            .bind(max_rows)
            .fetch_all(&mut *tx)
            .await?;
        let Some(end) = super::results_page_end(&sizes, max_bytes) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(super::RESULT_ROWS_SQL)
            .bind(job_id)
            .bind(after)
            .bind(end)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
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
             WHERE job_id = ANY($1) AND master_id = $2 AND state = 'revoked'",
        )
        .bind(jobs)
        .bind(master_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    async fn blacklisted_among(&self, worker_ids: &[String]) -> Result<Vec<String>> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM workers WHERE id = ANY($1) AND blacklisted_at IS NOT NULL",
        )
        .bind(worker_ids)
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
        let size = i32::try_from(bytes.len())
            .map_err(|_| StoreError::TooLarge("module too large".into()))?;
        let mut tx = self.pool.begin().await?;
        if let (Some(limit), Some(token)) = (max_bytes, uploaded_by) {
            lock_tenant(&mut tx, token).await?;
            let held: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM module_uploads WHERE module_id = $1 AND uploader = $2",
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
        // DO UPDATE rather than DO NOTHING: it waits for a concurrent deletion of the same
        // module and then inserts it again, so the hold below never points at a deleted row.
        let inserted: bool = sqlx::query_scalar(
            "INSERT INTO modules (id, bytes, size, uploaded_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET size = modules.size
             RETURNING (xmax = 0)",
        )
        .bind(id)
        .bind(bytes)
        .bind(size)
        .bind(uploaded_by)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO module_uploads (module_id, uploader, size) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(uploader)
        .bind(i64::from(size))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn delete_module(&self, owner: Owner, id: &str) -> Result<ModuleDeletion> {
        let mut tx = self.pool.begin().await?;
        // Lock the module first: a job being stored on it holds FOR SHARE until it commits, so
        // the in-use check below (a later statement, a fresh snapshot) sees that job.
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM modules WHERE id = $1 FOR UPDATE")
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
                    "DELETE FROM module_uploads WHERE module_id = $1 AND uploader = $2",
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
                    sqlx::query_scalar("SELECT count(*) FROM module_uploads WHERE module_id = $1")
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
            sqlx::query("DELETE FROM modules WHERE id = $1")
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
        let jobs = sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE finished_at IS NOT NULL AND results_purged_at IS NULL AND finished_at < $1
               AND state IN ('done', 'failed', 'cancelled')
               AND (export_state IS NULL OR export_state <> 'pending')
             ORDER BY finished_at LIMIT $2",
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
             WHERE id = $1 AND finished_at < $2 AND results_purged_at IS NULL
               AND state IN ('done', 'failed', 'cancelled')",
        )
        .bind(job)
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await?;
        let step = match marked {
            None => RetentionStep::Skipped,
            Some(false) => {
                // Mark first (it locks the job's row and checks again that the job is final),
                // then settle its credit, which reads the replicas about to go.
                let marked = sqlx::query(
                    "UPDATE jobs SET results_deleted_at = now()
                     WHERE id = $1 AND results_deleted_at IS NULL
                       AND state IN ('done', 'failed', 'cancelled')",
                )
                .bind(job)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if marked == 0 {
                    RetentionStep::Skipped
                } else {
                    let claimed = sqlx::query(
                        "INSERT INTO credited_jobs (job_id) VALUES ($1) ON CONFLICT DO NOTHING",
                    )
                    .bind(job)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if claimed == 1 {
                        sqlx::query(&super::insights::settle_job_sql(true))
                            .bind(job)
                            .execute(&mut *tx)
                            .await?;
                    }
                    RetentionStep::Marked
                }
            }
            Some(true) => {
                let mut deleted = sqlx::query(
                    "DELETE FROM replicas WHERE id IN (
                         SELECT id FROM replicas WHERE job_id = $1 LIMIT $2)",
                )
                .bind(job)
                .bind(batch_rows)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if deleted == 0 {
                    deleted = sqlx::query(
                        "DELETE FROM chunks WHERE job_id = $1 AND idx IN (
                             SELECT idx FROM chunks WHERE job_id = $1 ORDER BY idx LIMIT $2)",
                    )
                    .bind(job)
                    .bind(batch_rows)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                if deleted == 0 {
                    sqlx::query("UPDATE jobs SET results_purged_at = now() WHERE id = $1")
                        .bind(job)
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
        // A claim of a master whose heartbeat is stale (it died mid-export) is taken over; the
        // table's transaction identifier keeps the retry from appending the job twice.
        let row = sqlx::query(
            "UPDATE jobs SET export_master = $1, export_attempts = export_attempts + 1
             WHERE id = (
                 SELECT j.id FROM jobs j
                 WHERE j.export_state = 'pending' AND j.state IN ('done', 'failed')
                   AND (j.export_not_before IS NULL OR j.export_not_before <= now())
                   AND (j.export_master IS NULL OR NOT EXISTS (
                        SELECT 1 FROM masters m
                        WHERE m.id = j.export_master
                          AND m.heartbeat_at > now() - make_interval(secs => $2)))
                 ORDER BY j.id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id, sink, export_attempts",
        )
        .bind(master_id)
        .bind(super::MASTER_TIMEOUT_SECONDS as f64)
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

type Tx = Transaction<'static, Postgres>;

/// Serialize one tenant's quota checks with their inserts, across masters: a transaction-scoped
/// advisory lock on the token (released at commit or rollback). The first key names the quota
/// locks; ids beyond 32 bits share a lock with another token, which only serializes more.
async fn lock_tenant(tx: &mut Tx, token: i64) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('grid_quota'), ($1 % 2147483647)::int)")
        .bind(token)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ready-chunk rows (job_id, idx, priority, kernel, input, lease_seconds, wanted, holders) as
/// dispatch cache entries.
fn ready_rows(rows: &[PgRow]) -> Result<Vec<ReadyChunk>> {
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
        let input = serde_json::from_str(&input)
            .map_err(|error| StoreError::Corrupt(anyhow::anyhow!("stored input: {error}")))?;
        chunks.push(ReadyChunk {
            job_id,
            idx: row.try_get("idx")?,
            priority: row.try_get("priority")?,
            task,
            input: Arc::new(input),
            lease_seconds: row.try_get("lease_seconds")?,
            wanted: row.try_get("wanted")?,
            holders: row.try_get("holders")?,
            tenant: row.try_get("tenant")?,
            weight: row.try_get("weight")?,
        });
    }
    Ok(chunks)
}

/// An open PostgreSQL transaction as a commit and its review see it: set-based statements
/// over arrays (`UNNEST`), a few per step whatever the batch's size.
///
/// Every change to `jobs` rows is held back to the end of the commit ([`CommitTx::count_replicas`]),
/// where the rows are locked in id order and written: every commit thus locks chunk and
/// replica rows first and job rows last, so two masters committing rounds of the same job
/// cannot deadlock (they did, one holding a job row from the review's counters while it
/// claimed chunks the other held, each costing PostgreSQL's one-second deadlock timeout).
struct PgBatch<'t> {
    tx: &'t mut Tx,
    /// The replica counters' changes of this commit.
    tally: ReplicaTally,
    /// The chunk counters' changes of this commit's review rounds.
    job_deltas: BTreeMap<i64, JobDelta>,
    /// Queued jobs whose first lease this commit issued.
    started: BTreeSet<i64>,
}

impl<'t> PgBatch<'t> {
    fn new(tx: &'t mut Tx) -> Self {
        PgBatch {
            tx,
            tally: ReplicaTally::default(),
            job_deltas: BTreeMap::new(),
            started: BTreeSet::new(),
        }
    }
}

/// The rows a `RETURNING id, job_id, chunk_idx, ringer, state` statement changed.
fn changed_replicas(rows: &[PgRow]) -> Result<Vec<ChangedReplica>> {
    rows.iter()
        .map(|row| {
            Ok(ChangedReplica {
                lease: row.try_get("id")?,
                chunk: (row.try_get("job_id")?, row.try_get("chunk_idx")?),
                ringer: row.try_get("ringer")?,
                state: row.try_get("state")?,
            })
        })
        .collect()
}

#[async_trait]
impl CommitTx for PgBatch<'_> {
    fn tally(&mut self) -> &mut ReplicaTally {
        &mut self.tally
    }

    async fn record_workers(&mut self, seen: &[(Arc<str>, &'static str)]) -> Result<()> {
        // ON CONFLICT DO UPDATE may not touch a row twice in one statement: deduplicate first.
        let unique: BTreeMap<&str, &str> = seen.iter().map(|(id, kind)| (&**id, *kind)).collect();
        let ids: Vec<&str> = unique.keys().copied().collect();
        let kinds: Vec<&str> = unique.values().copied().collect();
        sqlx::query(
            "INSERT INTO workers (id, kind) SELECT * FROM UNNEST($1::text[], $2::text[])
             ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, last_seen = now()",
        )
        .bind(&ids)
        .bind(&kinds)
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn record_results(
        &mut self,
        results: &[ResultSubmission],
    ) -> Result<Vec<ChangedReplica>> {
        let leases: Vec<i64> = results.iter().map(|r| r.lease).collect();
        let workers: Vec<&str> = results.iter().map(|r| &*r.worker_id).collect();
        let digests: Vec<Vec<u8>> = results.iter().map(|r| r.digest.to_vec()).collect();
        let errors: Vec<bool> = results.iter().map(|r| r.is_error).collect();
        let texts: Vec<&str> = results.iter().map(|r| r.text.as_str()).collect();
        let rows = sqlx::query(
            "UPDATE replicas r
             SET state = 'returned', returned_at = now(), outcome_digest = t.digest,
                 outcome_is_error = t.is_error, outcome = t.text
             FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::bool[], $5::text[])
                  AS t(id, worker_id, digest, is_error, text)
             WHERE r.id = t.id AND r.worker_id = t.worker_id AND r.state = 'leased'
             RETURNING r.id, r.job_id, r.chunk_idx, r.ringer, r.state",
        )
        .bind(&leases)
        .bind(&workers)
        .bind(&digests)
        .bind(&errors)
        .bind(&texts)
        .fetch_all(&mut **self.tx)
        .await?;
        changed_replicas(&rows)
    }

    async fn end_leases(&mut self, ended: &[(i64, LeaseEnd)]) -> Result<Vec<ChangedReplica>> {
        let leases: Vec<i64> = ended.iter().map(|(lease, _)| *lease).collect();
        let states: Vec<&str> = ended.iter().map(|(_, end)| end.state().as_str()).collect();
        let rows = sqlx::query(
            "UPDATE replicas r SET state = t.state
             FROM UNNEST($1::bigint[], $2::text[]) AS t(id, state)
             WHERE r.id = t.id AND r.state = 'leased'
             RETURNING r.id, r.job_id, r.chunk_idx, r.ringer, r.state",
        )
        .bind(&leases)
        .bind(&states)
        .fetch_all(&mut **self.tx)
        .await?;
        changed_replicas(&rows)
    }

    async fn sweep_expired(
        &mut self,
        _sweep: ExpirySweep,
        master_id: &str,
    ) -> Result<Vec<ChangedReplica>> {
        sqlx::query(
            "INSERT INTO masters (id) VALUES ($1)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(master_id)
        .execute(&mut **self.tx)
        .await?;
        // Overdue leases, and leases of masters that stopped heartbeating (killed, or cut
        // off): their workers have failed over or are gone, so the chunks are reissued. Leases
        // past their deadline are the worker's doing ('expired': that worker and its network
        // never get the chunk again); those of dead masters are not ('revoked': they free
        // their origin, so a master's restart strands no chunk). At start-up the same rule
        // holds: this master's previous process is one of the dead once its heartbeat is stale.
        let rows = sqlx::query(
            "UPDATE replicas r
             SET state = CASE WHEN r.deadline < now() THEN 'expired' ELSE 'revoked' END
             WHERE r.state = 'leased'
               AND (r.deadline < now()
                    OR r.master_id IS NULL
                    OR NOT EXISTS (SELECT 1 FROM masters m
                                   WHERE m.id = r.master_id
                                     AND m.heartbeat_at > now() - $1 * interval '1 second'))
             RETURNING r.id, r.job_id, r.chunk_idx, r.ringer, r.state",
        )
        .bind(MASTER_TIMEOUT_SECONDS as f64)
        .fetch_all(&mut **self.tx)
        .await?;
        changed_replicas(&rows)
    }

    async fn claim_replicas(
        &mut self,
        wanted: &BTreeMap<ChunkKey, i32>,
    ) -> Result<BTreeSet<ChunkKey>> {
        let (jobs, indexes) = key_columns(wanted.keys());
        let counts: Vec<i32> = wanted.values().copied().collect();
        let rows = sqlx::query(
            "UPDATE chunks c SET wanted = c.wanted - t.n
             FROM UNNEST($1::bigint[], $2::int[], $3::int[]) AS t(job_id, idx, n)
             WHERE c.job_id = t.job_id AND c.idx = t.idx AND c.state = 'open' AND c.wanted >= t.n
             RETURNING c.job_id, c.idx",
        )
        .bind(&jobs)
        .bind(&indexes)
        .bind(&counts)
        .fetch_all(&mut **self.tx)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("job_id")?, row.try_get("idx")?)))
            .collect()
    }

    async fn insert_leases(
        &mut self,
        requests: &[&LeaseRequest],
        master_id: &str,
    ) -> Result<Vec<Option<i64>>> {
        let job_ids: Vec<i64> = requests.iter().map(|r| r.job_id).collect();
        let indexes: Vec<i32> = requests.iter().map(|r| r.idx).collect();
        let workers: Vec<&str> = requests.iter().map(|r| &*r.worker_id).collect();
        let seconds: Vec<i32> = requests.iter().map(|r| r.lease_seconds).collect();
        let ringers: Vec<bool> = requests.iter().map(|r| r.ringer).collect();
        let origins: Vec<Option<&str>> = requests.iter().map(|r| r.origin.as_deref()).collect();
        let rows = sqlx::query(
            "INSERT INTO replicas (job_id, chunk_idx, worker_id, deadline, master_id, ringer, origin)
             SELECT t.job_id, t.idx, t.worker_id, now() + t.seconds * interval '1 second', $5,
                    t.ringer, t.origin
             FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::int[], $6::bool[], $7::text[])
                  AS t(job_id, idx, worker_id, seconds, ringer, origin)
             -- A ringer from a stale pool whose chunk the retention deleted is not granted.
             WHERE NOT t.ringer
                OR EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = t.job_id AND c.idx = t.idx)
             ON CONFLICT DO NOTHING
             RETURNING id, job_id, chunk_idx, worker_id",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .bind(&workers)
        .bind(&seconds)
        .bind(master_id)
        .bind(&ringers)
        .bind(&origins)
        .fetch_all(&mut **self.tx)
        .await?;
        let mut by_key: HashMap<(i64, i32, String), i64> = HashMap::with_capacity(rows.len());
        for row in rows {
            by_key.insert(
                (
                    row.try_get("job_id")?,
                    row.try_get("chunk_idx")?,
                    row.try_get("worker_id")?,
                ),
                row.try_get("id")?,
            );
        }
        Ok(requests
            .iter()
            .map(|r| by_key.remove(&(r.job_id, r.idx, r.worker_id.to_string())))
            .collect())
    }

    async fn mark_started(&mut self, jobs: &BTreeSet<i64>) -> Result<()> {
        // Written with the other job rows at the end of the commit (see `PgBatch`).
        self.started.extend(jobs);
        Ok(())
    }

    /// Every job row change of the commit, the rows locked first in id order (see `PgBatch`).
    async fn count_replicas(&mut self) -> Result<()> {
        let mut touched: BTreeSet<i64> = self.job_deltas.keys().copied().collect();
        touched.extend(&self.started);
        touched.extend(self.tally.deltas().map(|(job, _)| job));
        if touched.len() > 1 {
            let ids: Vec<i64> = touched.into_iter().collect();
            sqlx::query("SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
                .bind(&ids)
                .execute(&mut **self.tx)
                .await?;
        }
        let per_job = std::mem::take(&mut self.job_deltas);
        if !per_job.is_empty() {
            let jobs: Vec<i64> = per_job.keys().copied().collect();
            let done: Vec<i32> = per_job.values().map(|d| d.done).collect();
            let failed: Vec<i32> = per_job.values().map(|d| d.failed).collect();
            let revised: Vec<i32> = per_job.values().map(|d| d.revised).collect();
            sqlx::query(super::COUNT_JOBS_SQL_POSTGRES)
                .bind(&jobs)
                .bind(&done)
                .bind(&failed)
                .bind(&revised)
                .execute(&mut **self.tx)
                .await?;
        }
        let started = std::mem::take(&mut self.started);
        if !started.is_empty() {
            let jobs: Vec<i64> = started.into_iter().collect();
            sqlx::query(
                "UPDATE jobs SET state = 'running', started_at = now()
                 WHERE id = ANY($1) AND state = 'queued'",
            )
            .bind(&jobs)
            .execute(&mut **self.tx)
            .await?;
        }
        if self.tally.is_empty() {
            return Ok(());
        }
        let (jobs, issued, returned, invalid, expired) = self.tally.columns();
        sqlx::query(
            "UPDATE jobs j
             SET replicas_issued = j.replicas_issued + t.issued,
                 replicas_returned = j.replicas_returned + t.returned,
                 replicas_invalid = j.replicas_invalid + t.invalid,
                 replicas_expired = j.replicas_expired + t.expired
             FROM (SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                                        $5::bigint[]) AS u(id, issued, returned, invalid, expired)
                   ORDER BY id) t
             WHERE j.id = t.id",
        )
        .bind(&jobs)
        .bind(&issued)
        .bind(&returned)
        .bind(&invalid)
        .bind(&expired)
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }
}

fn key_columns<'a>(keys: impl Iterator<Item = &'a ChunkKey>) -> (Vec<i64>, Vec<i32>) {
    keys.map(|&(job, idx)| (job, idx)).unzip()
}

#[async_trait]
impl ReviewDb for PgBatch<'_> {
    async fn load_chunks(
        &mut self,
        keys: &BTreeSet<ChunkKey>,
    ) -> Result<BTreeMap<ChunkKey, ChunkRow>> {
        let (job_ids, indexes) = key_columns(keys.iter());
        // Locked in key order, so concurrent masters cannot deadlock on them; under READ
        // COMMITTED every read after the lock sees each committed result.
        let rows = sqlx::query(
            "SELECT c.job_id, c.idx, c.state, c.wanted, c.quorum, c.output_digest,
                    j.redundancy, j.max_replicas, j.verification,
                    j.kernel LIKE 'sha256:%' AS module
             FROM chunks c
             JOIN UNNEST($1::bigint[], $2::int[]) AS t(job_id, idx)
               ON c.job_id = t.job_id AND c.idx = t.idx
             -- A lateral lookup (OFFSET 0 keeps it from being flattened) so the planner
             -- always reaches chunks by (job_id, idx); a plain join to jobs let it scan
             -- every chunk of the job per touched chunk when statistics were stale.
             CROSS JOIN LATERAL (
                 SELECT redundancy, max_replicas, verification, kernel FROM jobs
                 WHERE id = c.job_id OFFSET 0
             ) j
             ORDER BY c.job_id, c.idx
             FOR UPDATE OF c",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .fetch_all(&mut **self.tx)
        .await?;
        let mut chunks = BTreeMap::new();
        for row in rows {
            let redundancy: i32 = row.try_get("redundancy")?;
            let max_replicas: i32 = row.try_get("max_replicas")?;
            let quorum: Option<i32> = row.try_get("quorum")?;
            let verification: Verification = row.try_get("verification")?;
            chunks.insert(
                (row.try_get("job_id")?, row.try_get("idx")?),
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
        let (job_ids, indexes) = key_columns(keys.iter());
        let rows = sqlx::query(
            "SELECT r.id, r.job_id, r.chunk_idx, r.worker_id, r.state, r.outcome_digest,
                    r.outcome_is_error, r.ringer, r.verdict, r.origin,
                    (SELECT w.kind FROM workers w WHERE w.id = r.worker_id) AS kind
             FROM replicas r
             JOIN UNNEST($1::bigint[], $2::int[]) AS t(job_id, idx)
               ON r.job_id = t.job_id AND r.chunk_idx = t.idx",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .fetch_all(&mut **self.tx)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReplicaRow {
                    lease: row.try_get("id")?,
                    chunk: (row.try_get("job_id")?, row.try_get("chunk_idx")?),
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
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn load_standings(
        &mut self,
        workers: &BTreeSet<String>,
    ) -> Result<HashMap<String, (i64, bool)>> {
        let ids: Vec<&str> = workers.iter().map(String::as_str).collect();
        let rows = sqlx::query(
            "SELECT id, consecutive_valid, blacklisted_at IS NOT NULL AS blacklisted
             FROM workers WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut **self.tx)
        .await?;
        let mut standings = HashMap::with_capacity(rows.len());
        for row in rows {
            let consecutive: i32 = row.try_get("consecutive_valid")?;
            standings.insert(
                row.try_get("id")?,
                (i64::from(consecutive), row.try_get("blacklisted")?),
            );
        }
        Ok(standings)
    }

    async fn accept(&mut self, accepted: &[Accepted]) -> Result<()> {
        let (job_ids, indexes) = key_columns(accepted.iter().map(|a| &a.chunk));
        let canonical: Vec<i64> = accepted.iter().map(|a| a.canonical).collect();
        let agreeing: Vec<i32> = accepted.iter().map(|a| a.agreeing).collect();
        let is_error: Vec<bool> = accepted.iter().map(|a| a.is_error).collect();
        let digests: Vec<Vec<u8>> = accepted.iter().map(|a| a.digest.to_vec()).collect();
        let quorum: Vec<Option<i32>> = accepted.iter().map(|a| a.quorum).collect();
        let alone_by: Vec<Option<&str>> = accepted.iter().map(|a| a.alone_by.as_deref()).collect();
        sqlx::query(
            "UPDATE chunks c
             SET state = CASE WHEN t.is_error THEN 'failed' ELSE 'done' END,
                 wanted = 0, agreeing = t.agreeing, finished_at = now(),
                 output = CASE WHEN t.is_error THEN NULL ELSE r.outcome END,
                 error = CASE WHEN t.is_error THEN r.outcome ELSE NULL END,
                 output_digest = t.digest, quorum = COALESCE(t.quorum, c.quorum),
                 accepted_alone_by = t.alone_by
             FROM UNNEST($1::bigint[], $2::int[], $3::bigint[], $4::int[], $5::bool[],
                         $6::bytea[], $7::int[], $8::text[])
                  AS t(job_id, idx, canonical, agreeing, is_error, digest, quorum, alone_by)
             JOIN replicas r ON r.id = t.canonical
             WHERE c.job_id = t.job_id AND c.idx = t.idx",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .bind(&canonical)
        .bind(&agreeing)
        .bind(&is_error)
        .bind(&digests)
        .bind(&quorum)
        .bind(&alone_by)
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn fail(&mut self, failed: &[(ChunkKey, String)]) -> Result<()> {
        let (job_ids, indexes) = key_columns(failed.iter().map(|f| &f.0));
        let reasons: Vec<&str> = failed.iter().map(|f| f.1.as_str()).collect();
        sqlx::query(
            "UPDATE chunks c SET state = 'failed', wanted = 0, error = t.reason,
                                 finished_at = now()
             FROM UNNEST($1::bigint[], $2::int[], $3::text[]) AS t(job_id, idx, reason)
             WHERE c.job_id = t.job_id AND c.idx = t.idx",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .bind(&reasons)
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn set_wanted(&mut self, wanted: &[(ChunkKey, i32, Option<i32>)]) -> Result<()> {
        let (job_ids, indexes) = key_columns(wanted.iter().map(|w| &w.0));
        let counts: Vec<i32> = wanted.iter().map(|w| w.1).collect();
        let quorum: Vec<Option<i32>> = wanted.iter().map(|w| w.2).collect();
        sqlx::query(
            "UPDATE chunks c SET wanted = t.wanted, quorum = COALESCE(t.quorum, c.quorum)
             FROM UNNEST($1::bigint[], $2::int[], $3::int[], $4::int[])
                  AS t(job_id, idx, wanted, quorum)
             WHERE c.job_id = t.job_id AND c.idx = t.idx",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .bind(&counts)
        .bind(&quorum)
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn set_verdicts(&mut self, verdicts: &[(i64, Verdict)]) -> Result<()> {
        let leases: Vec<i64> = verdicts.iter().map(|v| v.0).collect();
        let valid: Vec<bool> = verdicts.iter().map(|v| v.1 == Verdict::Valid).collect();
        // The verdicts before (locked, so they are the latest) count the change exactly.
        let rows = sqlx::query(
            "WITH t AS (SELECT * FROM UNNEST($1::bigint[], $2::bool[]) AS t(id, valid)),
                  old AS (SELECT r.id, r.verdict FROM replicas r JOIN t ON r.id = t.id
                          ORDER BY r.id FOR UPDATE OF r)
             UPDATE replicas r
             SET verdict = CASE WHEN t.valid THEN 'valid' ELSE 'invalid' END
             FROM t JOIN old ON old.id = t.id
             WHERE r.id = t.id
             RETURNING r.job_id, r.ringer, old.verdict AS was, r.verdict AS now",
        )
        .bind(&leases)
        .bind(&valid)
        .fetch_all(&mut **self.tx)
        .await?;
        for row in rows {
            let was: Option<Verdict> = row.try_get("was")?;
            let now: Option<Verdict> = row.try_get("now")?;
            self.tally
                .verdict(row.try_get("job_id")?, row.try_get("ringer")?, was, now);
        }
        Ok(())
    }

    async fn revoke_live(&mut self, keys: &[ChunkKey]) -> Result<Vec<i64>> {
        let (job_ids, indexes) = key_columns(keys.iter());
        let revoked = sqlx::query_scalar(
            "UPDATE replicas r SET state = 'revoked'
             FROM UNNEST($1::bigint[], $2::int[]) AS t(job_id, idx)
             WHERE r.job_id = t.job_id AND r.chunk_idx = t.idx AND r.state = 'leased'
               AND NOT r.ringer
             RETURNING r.id",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .fetch_all(&mut **self.tx)
        .await?;
        Ok(revoked)
    }

    async fn count_jobs(&mut self, per_job: &BTreeMap<i64, JobDelta>) -> Result<()> {
        // Written with the other job rows at the end of the commit (see `PgBatch`).
        for (&job, delta) in per_job {
            let total = self.job_deltas.entry(job).or_default();
            total.done += delta.done;
            total.failed += delta.failed;
            total.revised += delta.revised;
        }
        Ok(())
    }

    async fn update_reputation(
        &mut self,
        deltas: &BTreeMap<String, ReputationDelta>,
    ) -> Result<HashMap<String, i64>> {
        let ids: Vec<&str> = deltas.keys().map(String::as_str).collect();
        let valid: Vec<i32> = deltas.values().map(|d| d.valid).collect();
        let invalid: Vec<i32> = deltas.values().map(|d| d.invalid).collect();
        let vouched: Vec<i32> = deltas.values().map(|d| d.vouched).collect();
        let forgiven: Vec<i32> = deltas.values().map(|d| d.forgiven).collect();
        let rows = sqlx::query(
            "UPDATE workers w
             SET valid_count = w.valid_count + t.valid,
                 invalid_count = GREATEST(w.invalid_count + t.invalid - t.forgiven, 0),
                 consecutive_valid = CASE WHEN t.invalid > 0 THEN 0
                                          ELSE w.consecutive_valid + t.vouched END
             FROM UNNEST($1::text[], $2::int[], $3::int[], $4::int[], $6::int[])
                  AS t(id, valid, invalid, vouched, forgiven)
             WHERE w.id = t.id
             RETURNING w.id, w.invalid_count - w.valid_count / $5 AS invalid_count",
        )
        .bind(&ids)
        .bind(&valid)
        .bind(&invalid)
        .bind(&vouched)
        .bind(crate::trust::VALID_RESULTS_PER_FORGIVEN_INVALID)
        .bind(&forgiven)
        .fetch_all(&mut **self.tx)
        .await?;
        let mut totals = HashMap::with_capacity(rows.len());
        for row in rows {
            let invalid: i32 = row.try_get("invalid_count")?;
            totals.insert(row.try_get("id")?, i64::from(invalid));
        }
        Ok(totals)
    }

    async fn blacklist(&mut self, workers: &BTreeMap<String, String>) -> Result<()> {
        let ids: Vec<&str> = workers.keys().map(String::as_str).collect();
        let reasons: Vec<&str> = workers.values().map(String::as_str).collect();
        sqlx::query(
            "UPDATE workers w SET blacklisted_at = now(), blacklist_reason = t.reason
             FROM UNNEST($1::text[], $2::text[]) AS t(id, reason)
             WHERE w.id = t.id AND w.blacklisted_at IS NULL",
        )
        .bind(&ids)
        .bind(&reasons)
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn unblacklist(&mut self, workers: &[String]) -> Result<Vec<String>> {
        let lifted = sqlx::query_scalar(
            "UPDATE workers SET blacklisted_at = NULL, blacklist_reason = NULL
             WHERE id = ANY($1) AND blacklisted_at IS NOT NULL
               AND blacklist_reason NOT LIKE $2 || '%'
             RETURNING id",
        )
        .bind(workers)
        .bind(crate::trust::PROVEN_LIE)
        .fetch_all(&mut **self.tx)
        .await?;
        Ok(lifted)
    }

    async fn withdraw_invalid(
        &mut self,
        chunks: &[ChunkKey],
        except: &str,
    ) -> Result<BTreeMap<String, i32>> {
        let (job_ids, indexes) = key_columns(chunks.iter());
        let rows = sqlx::query(
            "UPDATE replicas r SET verdict = NULL
             FROM UNNEST($1::bigint[], $2::int[]) AS t(job_id, idx)
             WHERE r.job_id = t.job_id AND r.chunk_idx = t.idx AND r.verdict = 'invalid'
               AND NOT r.ringer AND r.worker_id <> $3
             RETURNING r.worker_id, r.job_id",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .bind(except)
        .fetch_all(&mut **self.tx)
        .await?;
        let mut withdrawn: BTreeMap<String, i32> = BTreeMap::new();
        for row in rows {
            self.tally
                .verdict(row.try_get("job_id")?, false, Some(Verdict::Invalid), None);
            *withdrawn.entry(row.try_get("worker_id")?).or_default() += 1;
        }
        Ok(withdrawn)
    }

    async fn set_master_checked(&mut self, checks: &[(ChunkKey, bool)]) -> Result<()> {
        let (job_ids, indexes) = key_columns(checks.iter().map(|(key, _)| key));
        let agreed: Vec<bool> = checks.iter().map(|(_, agreed)| *agreed).collect();
        sqlx::query(
            "UPDATE chunks c
             SET master_checked = CASE WHEN t.agreed THEN 'agreed' ELSE 'disagreed' END,
                 ringer_key = CASE WHEN t.agreed THEN random() END
             FROM UNNEST($1::bigint[], $2::int[], $3::bool[]) AS t(job_id, idx, agreed)
             WHERE c.job_id = t.job_id AND c.idx = t.idx AND c.state = 'done'",
        )
        .bind(&job_ids)
        .bind(&indexes)
        .bind(&agreed)
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn backtrack(
        &mut self,
        worker: &str,
    ) -> Result<(Vec<(ChunkKey, bool)>, Vec<(i64, ChunkKey)>)> {
        let rows = sqlx::query(
            "WITH hit AS (
                 SELECT job_id, chunk_idx AS idx FROM replicas
                 WHERE worker_id = $1 AND verdict = 'valid' AND NOT ringer
                 UNION
                 SELECT job_id, idx FROM chunks WHERE accepted_alone_by = $1
             ),
             reopened AS (
                 SELECT c.job_id, c.idx, c.state FROM chunks c JOIN hit USING (job_id, idx)
                 WHERE c.state IN ('done', 'failed')
                   -- A cancelled job is nobody's any more: never revive its chunks.
                   -- Nor one whose results the retention deletes.
                   AND NOT EXISTS (SELECT 1 FROM jobs cj
                                   WHERE cj.id = c.job_id
                                     AND (cj.state = 'cancelled'
                                          OR cj.results_deleted_at IS NOT NULL))
                 FOR UPDATE OF c
             )
             UPDATE chunks c
             SET state = 'open', wanted = 0, output = NULL, error = NULL, agreeing = NULL,
                 output_digest = NULL, accepted_alone_by = NULL, finished_at = NULL,
                 revised = c.revised + 1,
                 quorum = CASE WHEN j.verification = 'adaptive' THEN j.redundancy END
             FROM reopened, jobs j
             WHERE c.job_id = reopened.job_id AND c.idx = reopened.idx AND j.id = c.job_id
             RETURNING c.job_id, c.idx, reopened.state AS was",
        )
        .bind(worker)
        .fetch_all(&mut **self.tx)
        .await?;
        let mut chunks = Vec::with_capacity(rows.len());
        for row in rows {
            let was: ChunkState = row.try_get("was")?;
            chunks.push((
                (row.try_get("job_id")?, row.try_get("idx")?),
                was == ChunkState::Failed,
            ));
        }
        let judged: Vec<i64> = sqlx::query_scalar(
            "UPDATE replicas SET verdict = 'invalid'
             WHERE worker_id = $1 AND state = 'returned' AND NOT ringer
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
             WHERE worker_id = $1 AND state = 'leased' RETURNING id, job_id, chunk_idx",
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
