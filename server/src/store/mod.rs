//! Durable state behind one trait, so the master does not care which database holds it.
//!
//! - [`Store`]: every operation the master performs on its database.
//! - [`postgres`]: the PostgreSQL implementation (production, several masters may share it).
//! - [`primary`]: which of several PostgreSQL hosts is the primary, followed across failovers.
//! - [`changes`]: what other masters sharing PostgreSQL changed, heard at once (LISTEN/NOTIFY).
//! - [`sqlite`]: the embedded default (one file under the data directory, one master).
//! - [`error`]: [`StoreError`], the store's own error type (the API maps it to statuses).
//! - [`commit`]: one batch committed, the steps written once over a per-backend port.
//! - [`portable`]: the store operations whose code is the same on both backends, written once.
//! - [`counters`]: the replica counters kept on each job's row, which job views read.
//! - The types here are what crosses the trait: job specs and views, ready chunks for the
//!   dispatch cache, and the [`Batch`] that the scheduler commits in one transaction.
//!
//! Trust is not here: each backend implements [`crate::trust::review::ReviewDb`] over its open
//! transaction, and [`crate::trust::review::reconcile`] decides, the same way for every backend.

pub mod changes;
pub mod commit;
pub mod counters;
pub mod error;
pub mod insights;
pub mod portable;
pub mod postgres;
pub mod primary;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use grid_protocol::LeaseId;
use grid_protocol::states::{ChunkState, ExportState, JobState, ReplicaState, Verification};
use serde::Serialize;

use crate::trust::review;
pub use error::{Result, StoreError};

/// Who owns a job: the admin, or the submitter token with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The admin token; sees every job.
    Admin,
    /// A submitter token (by id); sees only its own jobs.
    Submitter(i64),
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A built-in kernel, by name.
    Kernel(String),
    /// An uploaded task module and the limits of each of its chunks.
    Module {
        /// `sha256:<hex>`.
        id: String,
        /// Wall-clock limit per chunk.
        timeout_ms: i32,
        /// Memory cap per chunk, in MiB.
        max_memory_mb: i32,
        /// How the module's output bytes become each chunk's output.
        output: grid_protocol::OutputMode,
    },
}

impl Program {
    /// What the `jobs.kernel` column holds: the kernel name or the module id (module ids start
    /// with `sha256:`, which no kernel name does).
    pub fn stored_name(&self) -> &str {
        match self {
            Program::Kernel(name) => name,
            Program::Module { id, .. } => id,
        }
    }

    /// `(timeout_ms, max_memory_mb)` as stored: NULL for kernels.
    pub fn stored_limits(&self) -> (Option<i32>, Option<i32>) {
        match self {
            Program::Kernel(_) => (None, None),
            Program::Module {
                timeout_ms,
                max_memory_mb,
                ..
            } => (Some(*timeout_ms), Some(*max_memory_mb)),
        }
    }

    /// What the `jobs.module_output` column holds: `json` or `text`, NULL for kernels.
    pub fn stored_output(&self) -> Option<&'static str> {
        match self {
            Program::Kernel(_) => None,
            Program::Module { output, .. } => Some(output.name()),
        }
    }
}

/// The task of a stored job, from its `kernel`, `timeout_ms`, `max_memory_mb` and
/// `module_output` columns (NULL before that column existed: JSON).
pub(crate) fn stored_task(
    kernel: String,
    timeout_ms: Option<i32>,
    max_memory_mb: Option<i32>,
    module_output: Option<String>,
) -> Result<grid_protocol::Task> {
    use grid_protocol::Task;
    if !kernel.starts_with(grid_task_abi::MODULE_ID_PREFIX) {
        return Ok(Task::Kernel { name: kernel });
    }
    let positive = |value: Option<i32>, what: &str| {
        value
            .and_then(|value| u32::try_from(value).ok())
            .ok_or_else(|| StoreError::Corrupt(anyhow::anyhow!("module job without {what}")))
    };
    Ok(Task::Module {
        timeout_ms: positive(timeout_ms, "timeout_ms")?,
        max_memory_mb: positive(max_memory_mb, "max_memory_mb")?,
        output: module_output
            .as_deref()
            .and_then(grid_protocol::OutputMode::from_name)
            .unwrap_or_default(),
        id: kernel,
    })
}

/// The kernel and module fields of a [`JobView`] from the stored `jobs.kernel`.
pub(crate) fn split_program(stored: String) -> (Option<String>, Option<String>) {
    if stored.starts_with(grid_task_abi::MODULE_ID_PREFIX) {
        (None, Some(stored))
    } else {
        (Some(stored), None)
    }
}

/// A validated job, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Optional human name.
    pub name: Option<String>,
    /// What it runs.
    pub program: Program,
    /// Agreeing distinct workers needed per chunk.
    pub redundancy: i32,
    /// Most results gathered for one chunk before it fails.
    pub max_replicas: i32,
    /// Higher runs first.
    pub priority: i32,
    /// Lease length for each replica.
    pub lease_seconds: i32,
    /// `fixed` or `adaptive`.
    pub verification: Verification,
    /// Canonical JSON text of each chunk input, in index order.
    pub inputs: Vec<String>,
    /// The Delta table its results are appended to when it finishes (a URI the master's
    /// `--sink-root` admits, see [`crate::lakehouse`]).
    pub sink: Option<String>,
}

impl NewJob {
    /// Replicas each chunk wants at first: adaptive jobs start with one.
    pub fn initial_wanted(&self) -> i32 {
        if self.verification == Verification::Adaptive {
            1
        } else {
            self.redundancy
        }
    }
}

/// Chunk counters of a job.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ChunkCounts {
    /// Chunks in the job.
    pub total: i64,
    /// Chunks accepted with a quorum.
    pub done: i64,
    /// Chunks that failed (agreed error, or no quorum).
    pub failed: i64,
    /// Chunks reopened after acceptance because a worker behind them was caught lying;
    /// non-zero means results of this job changed (or may still change).
    pub revised: i64,
}

/// Replica counters of a job.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReplicaCounts {
    /// Leases ever created.
    pub issued: i64,
    /// Results received.
    pub returned: i64,
    /// Results that disagreed with the accepted outcome.
    pub invalid: i64,
    /// Leases that ended without a result (deadline passed, worker gone).
    pub expired: i64,
}

/// A submitter token as the admin's list shows it: never the token or its digest.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct TokenView {
    /// The token's id (what `DELETE /api/v1/tokens/{id}` takes).
    pub id: i64,
    /// The label given at creation, if any.
    pub label: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a master last looked it up in the database (at most a few seconds behind its
    /// last use; absent if never used).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked (absent while it works).
    pub revoked_at: Option<DateTime<Utc>>,
    /// Its share of the workers against other submitters' (weighted fair share; 1 unless
    /// the admin set it, `PATCH /api/v1/tokens/{id}`).
    pub weight: i32,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: i64,
    /// Optional human name.
    pub name: Option<String>,
    /// Built-in kernel name (kernel jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Uploaded module id, `sha256:<hex>` (module jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Wall-clock limit of one chunk in milliseconds (module jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i32>,
    /// Memory cap of one chunk in MiB (module jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<i32>,
    /// How module outputs are read (module jobs): `json` or `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Where the job is in its life.
    pub state: JobState,
    /// Agreeing distinct workers needed per chunk.
    pub redundancy: i32,
    /// Most results gathered per chunk.
    pub max_replicas: i32,
    /// Scheduling priority.
    pub priority: i32,
    /// Lease length in seconds.
    pub lease_seconds: i32,
    /// How its chunks are verified.
    pub verification: Verification,
    /// Chunk counters.
    pub chunks: ChunkCounts,
    /// Replica counters.
    pub replicas: ReplicaCounts,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When its first lease was issued.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// When the retention (`--retention-days`) deleted its replicas and results; from then on
    /// `GET /api/v1/jobs/{id}/results` answers 410 `results_expired`. The job and its counters
    /// stay. Null while they are kept.
    pub results_deleted_at: Option<DateTime<Utc>>,
    /// The export of its results to the Delta table it named (`sink`); absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportView>,
}

/// Where a job's export to its Delta table stands ([`crate::lakehouse`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ExportView {
    /// The table's URI, as the job named it.
    #[schema(example = "s3://lake/grid/results")]
    pub sink: String,
    /// Pending until the job finishes and the export has committed; failed after 5 attempts
    /// (see `error`); skipped when the job was cancelled.
    pub state: ExportState,
    /// Attempts so far (a failed one is retried after a back-off).
    pub attempts: i32,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The table version whose commit holds the job's rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_version: Option<i64>,
    /// When the export committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exported_at: Option<DateTime<Utc>>,
}

/// An export this master has claimed: it writes job `job_id`'s results to `sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportClaim {
    /// The finished job.
    pub job_id: i64,
    /// Its Delta table's URI.
    pub sink: String,
    /// This attempt's number, from 1.
    pub attempt: i32,
}

/// The export columns of a job view row (`j.sink`, `j.export_*`, `j.exported_at`), on either
/// backend: `None` when the job named no sink.
pub(crate) fn export_view<R>(row: &R) -> Result<Option<ExportView>, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> ExportState: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Some(sink) = row.try_get::<Option<String>, _>("sink")? else {
        return Ok(None);
    };
    Ok(Some(ExportView {
        sink,
        state: row
            .try_get::<Option<ExportState>, _>("export_state")?
            .unwrap_or(ExportState::Pending),
        attempts: row.try_get("export_attempts")?,
        error: row.try_get("export_error")?,
        table_version: row.try_get("export_version")?,
        exported_at: row.try_get("exported_at")?,
    }))
}

/// Most attempts at one export before it is given up as failed.
pub const EXPORT_MAX_ATTEMPTS: i32 = 5;

/// [`Store::export_done`]; portable: `$1` job, `$2` table version, `$3` now.
pub(crate) const EXPORT_DONE_SQL: &str = "
    UPDATE jobs SET export_state = 'done', export_version = $2, exported_at = $3,
                    export_error = NULL, export_master = NULL
    WHERE id = $1";

/// [`Store::export_failed`]; portable: `$1` job, `$2` master, `$3` error, `$4` most attempts,
/// `$5` no retry before. A claim another master took over is left to it.
pub(crate) const EXPORT_FAILED_SQL: &str = "
    UPDATE jobs
    SET export_state = CASE WHEN export_attempts >= $4 THEN 'failed' ELSE export_state END,
        export_error = $3, export_master = NULL, export_not_before = $5
    WHERE id = $1 AND export_master = $2 AND export_state = 'pending'";

/// Reasons are kept short in the job view.
pub(crate) fn export_error_text(error: &str) -> String {
    error.chars().take(512).collect()
}

/// One finished chunk, as a results line.
#[derive(Debug, Clone)]
pub struct ChunkResult {
    /// Chunk index.
    pub index: i32,
    /// Accepted output (canonical JSON text), when done.
    pub output: Option<String>,
    /// Distinct workers that returned it.
    pub agreeing: Option<i32>,
    /// Why it failed, when failed.
    pub error: Option<String>,
}

/// A chunk that wants replicas, as loaded into the dispatch cache.
#[derive(Debug, Clone)]
pub struct ReadyChunk {
    /// Job id.
    pub job_id: i64,
    /// Chunk index.
    pub idx: i32,
    /// Job priority.
    pub priority: i32,
    /// What to run (shared by every chunk of the job).
    pub task: Arc<grid_protocol::Task>,
    /// Parsed input.
    pub input: Arc<serde_json::Value>,
    /// Lease length.
    pub lease_seconds: i32,
    /// Replicas wanted now.
    pub wanted: i32,
    /// Identities and origins (networks) with a replica of it in any state but revoked: none
    /// of them may get another (see the `independence` migration).
    pub holders: Vec<String>,
    /// Whose job it is, for fair share between submitters.
    pub tenant: Tenant,
    /// The tenant's weight (its token's `weight`; 1 for the admin).
    pub weight: i32,
}

/// Whose work a chunk is, for fair share: the submitter token owning its job (`None`: the
/// admin's jobs, one tenant of their own).
pub type Tenant = Option<i64>;

/// A job with chunks to hand out, as the fair-share load sees it (see
/// [`crate::scheduler::dispatch::load_fair_share`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyJob {
    /// Job id.
    pub id: i64,
    /// Its priority (orders jobs within one tenant only).
    pub priority: i32,
    /// Who owns it.
    pub tenant: Tenant,
}

/// A result a session received for a lease it holds.
#[derive(Debug, Clone)]
pub struct ResultSubmission {
    /// The lease.
    pub lease: LeaseId,
    /// The worker that holds it (checked again in the database).
    pub worker_id: Arc<str>,
    /// `grid_protocol::outcome_digest` of the outcome.
    pub digest: [u8; 32],
    /// Whether the outcome is an error.
    pub is_error: bool,
    /// Canonical text of the outcome.
    pub text: String,
}

/// Why a lease ends without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The worker disconnected: reissue at once.
    WorkerGone,
    /// The worker gave it back unstarted.
    Released,
    /// The session ended because this master is shutting down: not the worker's doing, so it
    /// may take the chunk again (stored as `revoked`).
    MasterLeft,
}

impl LeaseEnd {
    /// The state the replica is left in.
    pub fn state(self) -> ReplicaState {
        match self {
            LeaseEnd::WorkerGone => ReplicaState::Expired,
            LeaseEnd::Released => ReplicaState::Released,
            LeaseEnd::MasterLeft => ReplicaState::Revoked,
        }
    }
}

/// A lease the scheduler wants to create.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// Job id.
    pub job_id: i64,
    /// Chunk index.
    pub idx: i32,
    /// The worker it goes to.
    pub worker_id: Arc<str>,
    /// The worker's network; `None` on a trusted network (the host's own machines, which may
    /// take a chunk again after losing a lease, like before networks were kept).
    pub origin: Option<Arc<str>>,
    /// Lease length.
    pub lease_seconds: i32,
    /// A spot-check of an accepted chunk (not part of its quorum).
    pub ringer: bool,
}

/// Which leased replicas to expire in this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpirySweep {
    /// None.
    #[default]
    None,
    /// Those past their deadline, or held by a master whose heartbeat is stale (it died).
    /// Also heartbeats this master.
    Overdue,
    /// At a master's start-up: on a shared database, those overdue or held by dead masters
    /// (this master's previous process among them, once its heartbeat is stale); on the
    /// single-master embedded database, all of them (their sessions died with the previous
    /// process).
    Startup,
}

/// A master is considered dead when its heartbeat is older than this.
pub const MASTER_TIMEOUT_SECONDS: i64 = 10;

/// Everything one scheduler round commits, in one transaction (group commit).
#[derive(Debug, Default)]
pub struct Batch {
    /// The committing master (stamped on the leases it creates, heartbeated by sweeps).
    pub master_id: Arc<str>,
    /// Plain voting: no blacklisting or backtracking in this batch's review (`--no-trust`).
    pub trust_off: bool,
    /// Worker identities that connected (upserted into `workers`).
    pub workers_seen: Vec<(Arc<str>, &'static str)>,
    /// Results received.
    pub results: Vec<ResultSubmission>,
    /// Leases that ended without a result.
    pub ended: Vec<(LeaseId, LeaseEnd)>,
    /// Expiry sweep to run.
    pub sweep: ExpirySweep,
    /// Leases to create.
    pub leases: Vec<LeaseRequest>,
    /// Accepted chunks the master computed itself: whether its output equals the accepted
    /// one. A refuted chunk blacklists the workers that returned the accepted output (see
    /// [`review::reconcile`]).
    pub master_checks: Vec<review::MasterCheck>,
}

impl Batch {
    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.workers_seen.is_empty()
            && self.results.is_empty()
            && self.ended.is_empty()
            && self.sweep == ExpirySweep::None
            && self.leases.is_empty()
            && self.master_checks.is_empty()
    }
}

/// What deleting a module did (see [`Store::delete_module`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleDeletion {
    /// No such module, or the caller does not hold it.
    NotFound,
    /// An unfinished job runs it (one of the caller's, or anyone's when the bytes would go).
    InUse,
    /// The caller's hold on it is gone; `bytes_removed` when nobody holds it any more and its
    /// bytes were deleted too.
    Deleted {
        /// The module's row (its bytes) was deleted.
        bytes_removed: bool,
    },
}

/// One bounded step of the retention on one job (see [`Store::retention_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionStep {
    /// The job is no longer eligible (not finished, or finished too recently, or done with).
    Skipped,
    /// The job's credit was settled and it was marked `results_deleted_at`.
    Marked,
    /// This many rows (replicas, then chunks) were deleted; more may remain.
    Deleted(u64),
    /// Nothing of the job is left to delete: it is marked purged.
    Purged,
}

/// What cancelling a job did.
#[derive(Debug, Clone)]
pub struct Cancellation {
    /// The job afterwards.
    pub job: JobView,
    /// False when the job had already finished (nothing changed).
    pub cancelled: bool,
    /// Leases revoked; their workers must be told.
    pub revoked: Vec<LeaseId>,
}

/// A lease created by a batch.
#[derive(Debug, Clone)]
pub struct CreatedLease {
    /// The new lease id.
    pub lease: LeaseId,
    /// Index into [`Batch::leases`] of the request it fulfils.
    pub request: usize,
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Results recorded (the lease was live and held by that worker).
    pub recorded: Vec<LeaseId>,
    /// Results refused because the lease was no longer live (e.g. revoked by a cancel).
    pub refused: Vec<LeaseId>,
    /// Leases created; requests not listed here were not granted (chunk no longer wanted).
    pub created: Vec<CreatedLease>,
    /// Live leases revoked because their chunk was decided; their workers should stop.
    pub revoked: Vec<LeaseId>,
    /// Leases the sweep expired; their workers should stop.
    pub expired: Vec<LeaseId>,
    /// Some chunk now wants more replicas than before: the dispatch cache is stale.
    pub reopened: bool,
    /// Chunks accepted in this batch.
    pub accepted: u64,
    /// Of those, accepted on one trusted worker's word alone (adaptive).
    pub accepted_alone: u64,
    /// Spot-check ringers judged.
    pub ringers_judged: u64,
    /// Workers blacklisted in this batch.
    pub blacklisted: Vec<String>,
    /// Workers whose blacklist was lifted in this batch (the invalid results that caused it
    /// were withdrawn).
    pub unblacklisted: Vec<String>,
    /// Chunks reopened by backtracking.
    pub backtracked: u64,
    /// Chunks failed in this batch.
    pub failed: u64,
    /// Returned replicas judged valid in this batch.
    pub valid_replicas: u64,
    /// Returned replicas judged invalid in this batch.
    pub invalid_replicas: u64,
}

impl BatchOutcome {
    /// Add what a follow-up batch of results alone did (the scheduler commits results apart
    /// when a batch must be split to find a row the database refuses).
    pub fn absorb(&mut self, other: BatchOutcome) {
        self.recorded.extend(other.recorded);
        self.refused.extend(other.refused);
        self.created.extend(other.created);
        self.revoked.extend(other.revoked);
        self.expired.extend(other.expired);
        self.reopened |= other.reopened;
        self.accepted += other.accepted;
        self.accepted_alone += other.accepted_alone;
        self.ringers_judged += other.ringers_judged;
        self.blacklisted.extend(other.blacklisted);
        self.unblacklisted.extend(other.unblacklisted);
        self.backtracked += other.backtracked;
        self.failed += other.failed;
        self.valid_replicas += other.valid_replicas;
        self.invalid_replicas += other.invalid_replicas;
    }
}

/// An accepted kernel chunk the master has not computed itself yet.
#[derive(Debug, Clone)]
pub struct MasterCheckCandidate {
    /// The chunk.
    pub chunk: review::ChunkKey,
    /// The built-in kernel.
    pub kernel: String,
    /// Its input, canonical JSON text.
    pub input: String,
    /// Digest of the accepted outcome.
    pub output_digest: [u8; 32],
}

/// A row of [`MASTER_CHECK_CANDIDATES_SQL`], on either backend (`None` without a digest).
pub(crate) fn master_check_candidate<R>(
    row: &R,
) -> std::result::Result<Option<MasterCheckCandidate>, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Some(output_digest) = review::digest_of(row.try_get("output_digest")?) else {
        return Ok(None);
    };
    Ok(Some(MasterCheckCandidate {
        chunk: (row.try_get("job_id")?, row.try_get("idx")?),
        kernel: row.try_get("kernel")?,
        input: row.try_get("input")?,
        output_digest,
    }))
}

/// The query behind [`Store::master_check_candidates`]; portable (`$N` placeholders work on
/// SQLite too). Newest first: a lie is best caught before its job's results are read.
pub(crate) const MASTER_CHECK_CANDIDATES_SQL: &str = "
    SELECT c.job_id, c.idx, j.kernel, c.input, c.output_digest
    FROM chunks c JOIN jobs j ON j.id = c.job_id
    WHERE c.state = 'done' AND c.master_checked IS NULL AND c.output_digest IS NOT NULL
      AND j.kernel NOT LIKE 'sha256:%'
    ORDER BY c.finished_at DESC
    LIMIT $1";

/// The query behind [`Store::ready_jobs`]; portable. The `jobs_unfinished` index holds just
/// the unfinished jobs, so this never reads the history.
pub(crate) const READY_JOBS_SQL: &str = "
    SELECT id, priority, owner_token_id FROM (
        SELECT id, priority, owner_token_id,
               ROW_NUMBER() OVER (PARTITION BY owner_token_id ORDER BY priority DESC, id) AS place
        FROM jobs
        WHERE state IN ('queued', 'running') AND chunks_done + chunks_failed < chunk_count
    ) ranked
    WHERE place <= $1
    ORDER BY owner_token_id, priority DESC, id";

/// The query behind [`Store::cancelled_since`]; portable (`jobs_cancelled` index).
pub(crate) const CANCELLED_SINCE_SQL: &str =
    "SELECT id FROM jobs WHERE state = 'cancelled' AND finished_at > $1";

/// The statement behind [`Store::set_token_weight`]; portable.
pub(crate) const SET_TOKEN_WEIGHT_SQL: &str = "
    UPDATE tokens SET weight = $2 WHERE id = $1
    RETURNING id, label, created_at, last_used_at, revoked_at, weight";

/// The columns of [`TokenView`], for `SELECT ... FROM tokens`.
pub(crate) const TOKEN_VIEW_COLUMNS: &str =
    "id, label, created_at, last_used_at, revoked_at, weight";

/// The statement behind [`Store::lift_blacklist`]; portable.
pub(crate) const LIFT_BLACKLIST_SQL: &str = "
    UPDATE workers
    SET blacklisted_at = NULL, blacklist_reason = NULL, invalid_count = 0, consecutive_valid = 0
    WHERE id = $1";

/// The query behind [`Store::chunk_states`]; portable SQL shared by both backends.
pub(crate) const CHUNK_STATES_SQL: &str = "
    SELECT
      COALESCE(SUM(CASE WHEN state IN ('queued', 'running')
                        THEN chunk_count - chunks_done - chunks_failed ELSE 0 END), 0),
      COALESCE(SUM(chunks_done), 0),
      COALESCE(SUM(chunks_failed), 0),
      COALESCE(SUM(CASE WHEN state = 'cancelled'
                        THEN chunk_count - chunks_done - chunks_failed ELSE 0 END), 0)
    FROM jobs";

/// A submitter's open chunks: the undecided chunks of its queued and running jobs, from their
/// counters (`$1` the token); portable.
pub(crate) const OPEN_CHUNKS_SQL: &str = "
    SELECT CAST(COALESCE(SUM(chunk_count - chunks_done - chunks_failed), 0) AS BIGINT)
    FROM jobs WHERE owner_token_id = $1 AND state IN ('queued', 'running')";

/// Module bytes a submitter holds (`$1` the token, 0 for the admin); portable.
pub(crate) const HELD_MODULE_BYTES_SQL: &str = "
    SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM module_uploads WHERE uploader = $1";

/// Whether an unfinished job runs module `$1`: anyone's when `$2`, else only token `$3`'s;
/// portable.
pub(crate) const MODULE_IN_USE_SQL: &str = "
    SELECT EXISTS (SELECT 1 FROM jobs
                   WHERE kernel = $1 AND state IN ('queued', 'running')
                     AND ($2 OR owner_token_id = $3))";

/// Sizes of the next finished chunks of a job (`$1` job, `$2` after this index, `$3` at most
/// this many), in index order: output plus error bytes; portable (SQLite ≥ 3.43 has
/// `octet_length`).
pub(crate) const RESULT_SIZES_SQL: &str = "
    SELECT idx, CAST(COALESCE(octet_length(output), 0) + COALESCE(octet_length(error), 0) AS BIGINT) AS bytes
    FROM chunks
    WHERE job_id = $1 AND idx > $2 AND state IN ('done', 'failed')
    ORDER BY idx LIMIT $3";

/// The finished chunks of a job in an index range (`$1` job, `$2` < idx ≤ `$3`); portable.
pub(crate) const RESULT_ROWS_SQL: &str = "
    SELECT idx, output, agreeing, error FROM chunks
    WHERE job_id = $1 AND idx > $2 AND idx <= $3 AND state IN ('done', 'failed')
    ORDER BY idx";

/// One row of [`RESULT_ROWS_SQL`], on either backend.
pub(crate) fn chunk_result<R>(row: &R) -> Result<ChunkResult, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ChunkResult {
        index: row.try_get("idx")?,
        output: row.try_get("output")?,
        agreeing: row.try_get("agreeing")?,
        error: row.try_get("error")?,
    })
}

/// The last index of a results page: `sizes` are `(index, bytes)` in index order; the page
/// takes them while their sum stays within `max_bytes`, and at least the first. `None` when
/// there is nothing left.
pub(crate) fn results_page_end(sizes: &[(i32, i64)], max_bytes: i64) -> Option<i32> {
    let (first, _) = *sizes.first()?;
    let mut total = 0i64;
    let mut end = first;
    for &(index, bytes) in sizes {
        total = total.saturating_add(bytes.max(0));
        if total > max_bytes && index != first {
            break;
        }
        end = index;
    }
    Some(end)
}

/// The `module_uploads.uploader` of an owner: its token id, 0 for the admin.
pub(crate) fn uploader(owner: Owner) -> i64 {
    match owner {
        Owner::Admin => 0,
        Owner::Submitter(token) => token,
    }
}

/// Job counters after a review round: `$1` ids, `$2` done, `$3` failed, `$4` revised deltas.
/// A job whose chunks are all decided becomes done (or failed); one reopened by backtracking
/// goes back to running. Cancelled jobs keep their state.
pub(crate) const COUNT_JOBS_SQL_POSTGRES: &str = "
    UPDATE jobs j
    SET chunks_done = j.chunks_done + t.done,
        chunks_failed = j.chunks_failed + t.failed,
        chunks_revised = j.chunks_revised + t.revised,
        state = CASE
            WHEN j.state = 'cancelled' THEN j.state
            WHEN j.chunks_done + t.done + j.chunks_failed + t.failed < j.chunk_count THEN 'running'
            WHEN j.chunks_failed + t.failed > 0 THEN 'failed'
            ELSE 'done' END,
        finished_at = CASE
            WHEN j.state = 'cancelled' THEN j.finished_at
            WHEN j.chunks_done + t.done + j.chunks_failed + t.failed < j.chunk_count THEN NULL
            ELSE now() END
    FROM UNNEST($1::bigint[], $2::int[], $3::int[], $4::int[]) AS t(id, done, failed, revised)
    WHERE j.id = t.id";

/// The operations of [`Store`] whose code is the same on every backend: implemented once, by
/// [`portable::portable_store_methods!`], for each.
#[async_trait]
pub trait PortableStore: Send + Sync + std::fmt::Debug + 'static {
    /// Every submitter token, revoked ones included, oldest first (never secrets or digests).
    async fn tokens(&self) -> Result<Vec<TokenView>>;
    /// Set a token's fair-share weight. `None`: no such token.
    async fn set_token_weight(&self, id: i64, weight: i32) -> Result<Option<TokenView>>;
    /// A job visible to `owner`.
    async fn job(&self, owner: Owner, id: i64) -> Result<Option<JobView>>;
    /// Jobs visible to `owner`, newest first.
    async fn jobs(&self, owner: Owner, limit: i64) -> Result<Vec<JobView>>;
    /// Unfinished jobs that may have chunks to hand out: at most `per_tenant` of each tenant
    /// (its highest priority first, then oldest), so that one tenant's many jobs cannot hide
    /// another's.
    async fn ready_jobs(&self, per_tenant: i64) -> Result<Vec<ReadyJob>>;
    /// Ready chunks of one job in index order (an index range read of `chunks_ready`).
    async fn ready_chunks_of_job(&self, job: &ReadyJob, limit: i64) -> Result<Vec<ReadyChunk>>;
    /// Jobs cancelled after `since` (on any master sharing the database).
    async fn cancelled_since(&self, since: DateTime<Utc>) -> Result<Vec<i64>>;
    /// Spot-check candidates, at random: accepted chunks whose output the master computed
    /// itself and found equal (`master_checked = 'agreed'`), so a ringer's answer is known
    /// independently of every worker and colluders cannot poison the pool.
    async fn ringer_pool(&self, limit: i64) -> Result<Vec<ReadyChunk>>;
    /// Lift an identity's blacklist and reset its reputation; false when it is unknown.
    async fn lift_blacklist(&self, worker_id: &str) -> Result<bool>;
    /// Accepted chunks of built-in kernels the master has not checked yet, newest first.
    async fn master_check_candidates(&self, limit: i64) -> Result<Vec<MasterCheckCandidate>>;
    /// Commit one scheduler round atomically.
    async fn commit(&self, batch: &Batch) -> Result<BatchOutcome>;
    /// Chunks by state (`open`, `done`, `failed`, `cancelled`), from the jobs' counters.
    async fn chunk_states(&self) -> Result<Vec<(ChunkState, i64)>>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<()>;
    /// The export of `job_id` committed as table version `table_version`.
    async fn export_done(&self, job_id: i64, table_version: i64) -> Result<()>;
    /// This master's attempt at exporting `job_id` failed with `error`: retry after `backoff`,
    /// or give up (`failed`) once [`EXPORT_MAX_ATTEMPTS`] attempts have been made.
    async fn export_failed(
        &self,
        job_id: i64,
        master_id: &str,
        error: &str,
        backoff: std::time::Duration,
    ) -> Result<()>;
    /// An uploaded module's bytes.
    async fn module_bytes(&self, id: &str) -> Result<Option<Vec<u8>>>;
    /// Store a new submitter token (its SHA-256) with an optional label, returning its id.
    async fn create_token(&self, token_hash: &[u8; 32], label: Option<&str>) -> Result<i64>;
    /// Find a submitter token that is not revoked by its SHA-256, and note that it was used.
    async fn find_token(&self, token_hash: &[u8; 32]) -> Result<Option<i64>>;
    /// Whether a module with this id is stored.
    async fn module_exists(&self, id: &str) -> Result<bool>;
    /// Ready chunks in dispatch order; with `for_worker` (identity, origin), only those that
    /// worker may take (no replica of it from that identity or that origin).
    async fn ready_chunks(
        &self,
        limit: i64,
        for_worker: Option<(&str, &str)>,
    ) -> Result<Vec<ReadyChunk>>;
}

/// A change another master made to the shared database that this one acts on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New work: a job was submitted, or a finished one reopened by backtracking.
    WorkAvailable,
    /// This job was cancelled: the leases held through this master must be revoked.
    Cancelled(i64),
}

/// Every operation the master performs on its database (with those of [`PortableStore`]).
#[async_trait]
pub trait Store: PortableStore {
    /// Changes other masters make, as they commit ([`changes`]); `None` where no other master
    /// can share the database (the embedded one). Called once, by the master at start.
    fn watch_changes(&self) -> Option<tokio::sync::mpsc::Receiver<Change>> {
        None
    }

    /// Record the WebSocket URL this master (`master_id`) is reached at, or withdraw it
    /// (`None`, when it begins to drain), for the other masters to name to their workers. A
    /// no-op where no other master can share the database.
    async fn advertise_master(&self, _master_id: &str, _url: Option<&str>) -> Result<()> {
        Ok(())
    }
    /// `(master id, WebSocket URL)` of the live masters (heartbeat within
    /// [`MASTER_TIMEOUT_SECONDS`]) that advertise a URL, oldest first.
    async fn live_masters(&self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    /// Revoke a token. `None`: no such token; `Some(false)`: it was revoked already.
    async fn revoke_token(&self, id: i64) -> Result<Option<bool>>;

    /// Store a job and its chunks. With `max_open_chunks`, refuse it (429/413
    /// `quota_exceeded`, nothing stored) when the owner's open chunks (from its unfinished
    /// jobs' counters) plus this job's would pass it; the check and the insert are serialized
    /// per owner, so concurrent submissions cannot jointly pass the limit. A module job whose
    /// module is not stored (or is being deleted) is refused with 422 `unknown_module`.
    async fn create_job(
        &self,
        owner: Owner,
        job: NewJob,
        max_open_chunks: Option<u64>,
    ) -> Result<JobView>;
    /// Cancel a queued or running job. None if the job is not visible to `owner`.
    async fn cancel_job(&self, owner: Owner, id: i64) -> Result<Option<Cancellation>>;
    /// Finished chunks of a job with index > `after`, in index order: at most `max_rows`, and
    /// no more than `max_bytes` of output and error text (but always the next one, whatever
    /// its size). Two reads: the sizes first ([`RESULT_SIZES_SQL`]), then the rows of the
    /// range that fits ([`RESULT_ROWS_SQL`]), so a page never holds more than it may.
    async fn results_page(
        &self,
        job_id: i64,
        after: i32,
        max_rows: i64,
        max_bytes: i64,
    ) -> Result<Vec<ChunkResult>>;

    /// Leases of `jobs` that the cancel revoked and that were issued through `master_id`: what
    /// that master's workers must be told to stop.
    async fn revoked_leases_of(&self, jobs: &[i64], master_id: &str) -> Result<Vec<LeaseId>>;
    /// Those of `worker_ids` that are blacklisted. The scheduler asks about the identities it
    /// has sessions for, so the answer is bounded by its sessions, never by how many burned
    /// identities the blacklist has collected (review M11).
    async fn blacklisted_among(&self, worker_ids: &[String]) -> Result<Vec<String>>;

    /// Store an uploaded module checked against the ABI, unless one with this id is stored
    /// already, and note that `owner` holds it (`module_uploads`). With `max_bytes`, refuse it
    /// (429/413 `quota_exceeded`, nothing stored) when the bytes the owner holds plus this
    /// module's would pass it (a module it holds already costs nothing more). Returns whether
    /// the bytes were new.
    async fn put_module(
        &self,
        owner: Owner,
        id: &str,
        bytes: &[u8],
        max_bytes: Option<u64>,
    ) -> Result<bool>;
    /// Drop `owner`'s hold on a module (the admin's drops every hold), and its bytes once
    /// nobody holds it. Refused while an unfinished job of the owner runs it, or, when the
    /// bytes would go, while any unfinished job does.
    async fn delete_module(&self, owner: Owner, id: &str) -> Result<ModuleDeletion>;

    /// Finished jobs (done, failed, cancelled) whose results are due for deletion: finished
    /// before `cutoff` and not purged yet, oldest first.
    async fn retention_candidates(&self, cutoff: DateTime<Utc>, limit: i64) -> Result<Vec<i64>>;
    /// One short transaction of the retention on `job` (finished before `cutoff`): first
    /// settle its volunteers' credit and mark it `results_deleted_at`, then delete up to
    /// `batch_rows` of its replicas, then of its chunks, then mark it purged.
    async fn retention_step(
        &self,
        job: i64,
        cutoff: DateTime<Utc>,
        batch_rows: i64,
    ) -> Result<RetentionStep>;
    /// Claim the oldest export that is due: a finished (done or failed) job with a sink whose
    /// export is pending, not backing off, and not claimed by a live master (on the embedded
    /// database: by this process). At most one master holds a claim at a time.
    async fn claim_export(&self, master_id: &str) -> Result<Option<ExportClaim>>;
}

#[cfg(test)]
mod tests {
    use super::results_page_end;

    #[test]
    fn a_results_page_ends_where_its_bytes_would_pass_the_limit() {
        assert_eq!(results_page_end(&[], 100), None);
        let sizes = [(0, 40), (1, 40), (2, 40), (5, 1)];
        assert_eq!(results_page_end(&sizes, 100), Some(1));
        assert_eq!(results_page_end(&sizes, 121), Some(5));
        assert_eq!(results_page_end(&sizes, 120), Some(2));
        // One result larger than the limit still goes out, alone.
        assert_eq!(results_page_end(&[(7, 1_000), (8, 1)], 100), Some(7));
    }
}
