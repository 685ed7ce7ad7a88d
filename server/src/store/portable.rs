//! Store operations whose code is the same on both backends, written once.
//!
//! [`portable_store_methods!`] expands to each backend's `impl PortableStore` (the part of
//! [`super::Store`] these methods are), so each is compiled once per backend. Their SQL is portable
//! (`$N` placeholders, which SQLite reads as positions too; times bound from Rust); the names
//! they use are each backend's own: `job_view`, `ready_rows`, `owner_filter`,
//! `JOB_VIEW_SELECT`, `holders_column!` and the commit port passed as `$batch`. Written as
//! generic functions over `sqlx::Database` instead, every one of them would need a dozen
//! higher-ranked bounds (one per type it binds or reads) repeated at each use.
//!
//! What differs between the backends stays in their files: set-based statements over arrays
//! (`UNNEST`) against a statement per row, advisory locks, `FOR UPDATE SKIP LOCKED`, and the
//! few queries whose SQL each database spells its own way.

/// [`super::PortableStore`] for `$store`, whose commit port is `$batch`.
macro_rules! portable_store_methods {
    ($store:ident, $batch:ident) => {
        #[async_trait::async_trait]
        impl super::PortableStore for $store {
                async fn create_token(&self, token_hash: &[u8; 32], label: Option<&str>) -> Result<i64> {
                    let id = sqlx::query_scalar(
                        "INSERT INTO tokens (token_hash, label, created_at) VALUES ($1, $2, $3) RETURNING id",
                    )
                    .bind(&token_hash[..])
                    .bind(label)
                    .bind(Utc::now())
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(id)
                }

                async fn find_token(&self, token_hash: &[u8; 32]) -> Result<Option<i64>> {
                    // One statement finds the token and notes its use (masters cache the answer, so this
                    // runs at most once per token per cache lifetime).
                    let id = sqlx::query_scalar(
                        "UPDATE tokens SET last_used_at = $2
                         WHERE token_hash = $1 AND revoked_at IS NULL RETURNING id",
                    )
                    .bind(&token_hash[..])
                    .bind(Utc::now())
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(id)
                }

                async fn module_exists(&self, id: &str) -> Result<bool> {
                    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM modules WHERE id = $1")
                        .bind(id)
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(found > 0)
                }

                async fn ready_chunks(
                    &self,
                    limit: i64,
                    for_worker: Option<(&str, &str)>,
                ) -> Result<Vec<ReadyChunk>> {
                    let rows = sqlx::query(
                        concat!(
                            "SELECT c.job_id, c.idx, c.priority, j.kernel, j.timeout_ms, j.max_memory_mb, j.module_output, c.input, j.lease_seconds, c.wanted, j.owner_token_id AS tenant, COALESCE(t.weight, 1) AS weight, ",
                            holders_column!(),
                            "
                         FROM chunks c JOIN jobs j ON j.id = c.job_id LEFT JOIN tokens t ON t.id = j.owner_token_id
                         WHERE c.state = 'open' AND c.wanted > 0
                           AND (CAST($2 AS TEXT) IS NULL OR NOT EXISTS (
                                SELECT 1 FROM replicas r
                                WHERE r.job_id = c.job_id AND r.chunk_idx = c.idx
                                  AND ((r.worker_id = $2 AND r.state IN ('leased', 'returned'))
                                       OR (r.origin = $3 AND r.state <> 'revoked'))))
                         ORDER BY c.priority DESC, c.job_id, c.idx
                         LIMIT $1"
                        ),
                    )
                    .bind(limit)
                    .bind(for_worker.map(|w| w.0))
                    .bind(for_worker.map(|w| w.1))
                    .fetch_all(&self.pool)
                    .await?;
                    ready_rows(&rows)
                }

                async fn tokens(&self) -> Result<Vec<super::TokenView>> {
                    let tokens = sqlx::query_as(&format!(
                        "SELECT {} FROM tokens ORDER BY id",
                        super::TOKEN_VIEW_COLUMNS
                    ))
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(tokens)
                }

                async fn set_token_weight(&self, id: i64, weight: i32) -> Result<Option<super::TokenView>> {
                    let token = sqlx::query_as(super::SET_TOKEN_WEIGHT_SQL)
                        .bind(id)
                        .bind(weight)
                        .fetch_optional(&self.pool)
                        .await?;
                    Ok(token)
                }

                async fn job(&self, owner: Owner, id: i64) -> Result<Option<JobView>> {
                    let (is_admin, owner_id) = owner_filter(owner);
                    let sql = format!("{JOB_VIEW_SELECT} WHERE j.id = $1 AND ($2 OR j.owner_token_id = $3)");
                    let row = sqlx::query(&sql)
                        .bind(id)
                        .bind(is_admin)
                        .bind(owner_id)
                        .fetch_optional(&self.pool)
                        .await?;
                    Ok(row.as_ref().map(job_view).transpose()?)
                }

                async fn jobs(&self, owner: Owner, limit: i64) -> Result<Vec<JobView>> {
                    let (is_admin, owner_id) = owner_filter(owner);
                    let sql = format!(
                        "{JOB_VIEW_SELECT} WHERE ($1 OR j.owner_token_id = $2) ORDER BY j.id DESC LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(is_admin)
                        .bind(owner_id)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(rows.iter().map(job_view).collect::<Result<_, _>>()?)
                }

                async fn ready_jobs(&self, per_tenant: i64) -> Result<Vec<super::ReadyJob>> {
                    let rows: Vec<(i64, i32, Option<i64>)> = sqlx::query_as(super::READY_JOBS_SQL)
                        .bind(per_tenant)
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(id, priority, tenant)| super::ReadyJob {
                            id,
                            priority,
                            tenant,
                        })
                        .collect())
                }

                async fn ready_chunks_of_job(
                    &self,
                    job: &super::ReadyJob,
                    limit: i64,
                ) -> Result<Vec<ReadyChunk>> {
                    // `c.priority = $1` makes this a range read of the `chunks_ready` index.
                    let rows = sqlx::query(concat!(
                        "SELECT c.job_id, c.idx, c.priority, j.kernel, j.timeout_ms, j.max_memory_mb, j.module_output, c.input, j.lease_seconds, c.wanted, j.owner_token_id AS tenant, COALESCE(t.weight, 1) AS weight, ",
                        holders_column!(),
                        "
                         FROM chunks c JOIN jobs j ON j.id = c.job_id LEFT JOIN tokens t ON t.id = j.owner_token_id
                         WHERE c.priority = $1 AND c.job_id = $2 AND c.state = 'open' AND c.wanted > 0
                         ORDER BY c.idx
                         LIMIT $3"
                    ))
                    .bind(job.priority)
                    .bind(job.id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                    ready_rows(&rows)
                }

                async fn cancelled_since(&self, since: DateTime<Utc>) -> Result<Vec<i64>> {
                    let ids = sqlx::query_scalar(super::CANCELLED_SINCE_SQL)
                        .bind(since)
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(ids)
                }

                async fn ringer_pool(&self, limit: i64) -> Result<Vec<ReadyChunk>> {
                    // From a random point of the sample index, wrapping around once (see the
                    // `ringer_sample` migration): an index range read, never a scan of every chunk.
                    let start: f64 = rand::random();
                    let mut rows = Vec::new();
                    for (from, to) in [(start, 1.0), (0.0, start)] {
                        let wanted = limit - rows.len() as i64;
                        if wanted <= 0 {
                            break;
                        }
                        rows.extend(
                            sqlx::query(concat!(
                                "SELECT c.job_id, c.idx, c.priority, j.kernel, j.timeout_ms, j.max_memory_mb, j.module_output, c.input, j.lease_seconds, 1 AS wanted, j.owner_token_id AS tenant, COALESCE(t.weight, 1) AS weight, ",
                                holders_column!(),
                                "
                             FROM chunks c JOIN jobs j ON j.id = c.job_id LEFT JOIN tokens t ON t.id = j.owner_token_id
                             WHERE c.state = 'done' AND c.master_checked = 'agreed'
                               -- Never a chunk the retention is deleting.
                               AND j.results_deleted_at IS NULL
                               AND c.ringer_key >= $2 AND c.ringer_key < $3
                               AND c.output_digest IS NOT NULL
                             ORDER BY c.ringer_key LIMIT $1"
                            ))
                            .bind(wanted)
                            .bind(from)
                            .bind(to)
                            .fetch_all(&self.pool)
                            .await?,
                        );
                    }
                    ready_rows(&rows)
                }

                async fn lift_blacklist(&self, worker_id: &str) -> Result<bool> {
                    let changed = sqlx::query(super::LIFT_BLACKLIST_SQL)
                        .bind(worker_id)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    Ok(changed > 0)
                }

                async fn master_check_candidates(&self, limit: i64) -> Result<Vec<MasterCheckCandidate>> {
                    let rows = sqlx::query(super::MASTER_CHECK_CANDIDATES_SQL)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?;
                    let candidates = rows
                        .iter()
                        .filter_map(|row| super::master_check_candidate(row).transpose())
                        .collect::<Result<_, sqlx::Error>>()?;
                    Ok(candidates)
                }

                async fn commit(&self, batch: &Batch) -> Result<BatchOutcome> {
                    let mut tx = self.pool.begin().await?;
                    let outcome = commit_batch(
                        &mut $batch::new(&mut tx),
                        batch,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(outcome)
                }

                async fn chunk_states(&self) -> Result<Vec<(ChunkState, i64)>> {
                    let (open, done, failed, cancelled): (i64, i64, i64, i64) =
                        sqlx::query_as(super::CHUNK_STATES_SQL)
                            .fetch_one(&self.pool)
                            .await?;
                    Ok(vec![
                        (ChunkState::Open, open),
                        (ChunkState::Done, done),
                        (ChunkState::Failed, failed),
                        (ChunkState::Cancelled, cancelled),
                    ])
                }

                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }

                async fn export_done(&self, job_id: i64, table_version: i64) -> Result<()> {
                    sqlx::query(super::EXPORT_DONE_SQL)
                        .bind(job_id)
                        .bind(table_version)
                        .bind(Utc::now())
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn export_failed(
                    &self,
                    job_id: i64,
                    master_id: &str,
                    error: &str,
                    backoff: std::time::Duration,
                ) -> Result<()> {
                    sqlx::query(super::EXPORT_FAILED_SQL)
                        .bind(job_id)
                        .bind(master_id)
                        .bind(super::export_error_text(error))
                        .bind(super::EXPORT_MAX_ATTEMPTS)
                        .bind(Utc::now() + backoff)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn module_bytes(&self, id: &str) -> Result<Option<Vec<u8>>> {
                    let bytes = sqlx::query_scalar("SELECT bytes FROM modules WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    Ok(bytes)
                }
        }
    };
}

pub(crate) use portable_store_methods;
