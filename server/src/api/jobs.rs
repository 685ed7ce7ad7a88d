//! Jobs: `GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`, `DELETE /api/v1/jobs/{id}`,
//! `GET /api/v1/jobs/{id}/results` (NDJSON; Parquet and Arrow by [`crate::export`]), and the
//! job fields of `POST /api/v1/jobs` ([`SubmitJob`], checked by [`validate`]; the body itself
//! is read by [`super::submit`]).
//!
//! Submissions are validated completely (kernel, every input, every field) before anything is
//! stored; a submitter sees only its own jobs, and someone else's job answers 404.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use grid_protocol::states::Verification;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::limits::{Limits, RESULTS_PAGE_BYTES, RESULTS_PAGE_ROWS};
use crate::scheduler::Event;
use crate::store::{JobView, NewJob, Program};

/// Bounds of the job fields (documented in the README).
pub const REDUNDANCY_RANGE: std::ops::RangeInclusive<i64> = 1..=5;
/// `max_replicas` may not exceed this.
pub const MAX_REPLICAS_CEILING: i64 = 20;
/// `priority` bounds.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;
/// `lease_seconds` bounds.
pub const LEASE_SECONDS_RANGE: std::ops::RangeInclusive<i64> = 5..=86_400;
/// Default lease length.
pub const DEFAULT_LEASE_SECONDS: i64 = 300;

/// The body of `POST /api/v1/jobs` (as JSON; or its `job` part, without `inputs`, beside a
/// dataset file in a multipart body).
///
/// This struct reads the job's fields only: `inputs` is skipped here and streamed into
/// canonical texts by [`crate::inputs`] in a second pass over the body, so a new field is one
/// more member below and one more line in [`validate`].
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// Built-in kernel name (give this or `module`).
    kernel: Option<String>,
    /// Uploaded module id, `sha256:<hex>` (give this or `kernel`).
    module: Option<String>,
    /// Module jobs: wall-clock limit of one chunk in milliseconds (default 30000, 10 to 600000).
    timeout_ms: Option<i64>,
    /// Module jobs: memory cap of one chunk in MiB (default 256, 1 to 2048).
    max_memory_mb: Option<i64>,
    /// Module jobs: how each chunk's output bytes (a WASI program's standard output) are read:
    /// `json` (default, UTF-8 JSON text) or `text` (any UTF-8 text, kept as a JSON string).
    output: Option<String>,
    /// One JSON value per chunk (or a dataset file: see the multipart form).
    #[schema(value_type = Option<Vec<Value>>)]
    pub(crate) inputs: Option<IgnoredAny>,
    /// Agreeing distinct workers per chunk (default 2).
    redundancy: Option<i64>,
    /// Optional human name.
    name: Option<String>,
    /// Most results per chunk before it fails (default 2 × redundancy + 1).
    max_replicas: Option<i64>,
    /// Higher first (default 0).
    priority: Option<i64>,
    /// Lease length in seconds (default 300).
    lease_seconds: Option<i64>,
    /// `fixed` (default): every chunk needs `redundancy` agreeing results; `adaptive`: a
    /// trusted worker's result may be accepted alone, spot-checked at random.
    verification: Option<String>,
    /// Append the results to a Delta Lake table when the job finishes (one commit, exactly
    /// once). The URI must lie under one of the master's `--sink-root`s.
    sink: Option<SinkSpec>,
}

/// Where a job's results go when it finishes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// The Delta table's URI: `file:///...` or `s3://bucket/path`, created on first use.
    #[schema(example = "s3://lake/grid/results", max_length = 1024)]
    delta: String,
}

fn in_range(field: &str, value: i64, range: std::ops::RangeInclusive<i64>) -> Result<i32> {
    if range.contains(&value) {
        Ok(i32::try_from(value).unwrap_or_default())
    } else {
        Err(Error::invalid(
            "invalid_field",
            format!(
                "{field} must be between {} and {}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// What the job runs, from the body's `kernel` or `module` and the module limits.
fn program(body: &SubmitJob) -> Result<Program> {
    use grid_task_abi::limits::*;
    if body.module.is_none()
        && (body.timeout_ms.is_some() || body.max_memory_mb.is_some() || body.output.is_some())
    {
        return Err(Error::invalid(
            "invalid_field",
            "timeout_ms, max_memory_mb and output apply to module jobs only",
        ));
    }
    match (&body.kernel, &body.module) {
        (Some(kernel), None) => {
            if grid_kernels::is_known(kernel) {
                Ok(Program::Kernel(kernel.clone()))
            } else {
                Err(Error::invalid(
                    "unknown_kernel",
                    format!(
                        "unknown kernel `{kernel}`; known kernels: {}",
                        grid_kernels::KERNEL_NAMES.join(", ")
                    ),
                ))
            }
        }
        (None, Some(module)) => {
            if !grid_task_abi::is_module_id(module) {
                return Err(Error::invalid(
                    "unknown_module",
                    format!(
                        "`{module}` is not a module id: ids are `sha256:` and 64 lowercase hex \
                         digits, as POST /api/v1/modules returns them"
                    ),
                ));
            }
            let timeout_ms = in_range(
                "timeout_ms",
                body.timeout_ms.unwrap_or(i64::from(DEFAULT_TIMEOUT_MS)),
                i64::from(MIN_TIMEOUT_MS)..=i64::from(MAX_TIMEOUT_MS),
            )?;
            let max_memory_mb = in_range(
                "max_memory_mb",
                body.max_memory_mb
                    .unwrap_or(i64::from(DEFAULT_MAX_MEMORY_MB)),
                i64::from(MIN_MAX_MEMORY_MB)..=i64::from(MAX_MAX_MEMORY_MB),
            )?;
            let output = match body.output.as_deref() {
                None => grid_protocol::OutputMode::Json,
                Some(name) => grid_protocol::OutputMode::from_name(name).ok_or_else(|| {
                    Error::invalid(
                        "invalid_field",
                        format!("output must be `json` or `text`, not `{name}`"),
                    )
                })?,
            };
            Ok(Program::Module {
                id: module.clone(),
                timeout_ms,
                max_memory_mb,
                output,
            })
        }
        (Some(_), Some(_)) => Err(Error::invalid(
            "invalid_field",
            "give either kernel or module, not both",
        )),
        (None, None) => Err(Error::invalid(
            "invalid_field",
            "a job needs a kernel (a built-in kernel name) or a module (an uploaded module id)",
        )),
    }
}

/// Seconds a lease must last at least for a module job: the chunk's time limit plus a margin
/// for downloading and compiling the module and for the result to travel back.
fn lease_floor(program: &Program) -> i64 {
    match program {
        Program::Kernel(_) => *LEASE_SECONDS_RANGE.start(),
        Program::Module { timeout_ms, .. } => {
            (i64::from(*timeout_ms) + 999) / 1000 + MODULE_LEASE_MARGIN_SECONDS
        }
    }
}

/// Margin of a module job's lease beyond its chunk time limit.
const MODULE_LEASE_MARGIN_SECONDS: i64 = 30;

/// Check a submission's fields and make the job, still without inputs: the caller streams
/// them into `inputs` ([`crate::inputs`]).
pub(crate) fn validate(limits: &Limits, body: SubmitJob) -> Result<NewJob> {
    let program = program(&body)?;
    if let Some(name) = &body.name
        && name.len() > limits.max_name_bytes
    {
        return Err(Error::invalid(
            "invalid_field",
            format!("name may be at most {} bytes", limits.max_name_bytes),
        ));
    }
    let redundancy = in_range("redundancy", body.redundancy.unwrap_or(2), REDUNDANCY_RANGE)?;
    let max_replicas = in_range(
        "max_replicas",
        body.max_replicas
            .unwrap_or((2 * i64::from(redundancy) + 1).min(MAX_REPLICAS_CEILING)),
        i64::from(redundancy)..=MAX_REPLICAS_CEILING,
    )?;
    let priority = in_range("priority", body.priority.unwrap_or(0), PRIORITY_RANGE)?;
    let floor = lease_floor(&program);
    let lease_seconds = in_range(
        "lease_seconds",
        body.lease_seconds
            .unwrap_or(DEFAULT_LEASE_SECONDS.max(floor)),
        floor.max(*LEASE_SECONDS_RANGE.start())..=*LEASE_SECONDS_RANGE.end(),
    )?;
    let verification = match body.verification.as_deref() {
        None => Verification::Fixed,
        Some(text) => text.parse().map_err(|_| {
            Error::invalid(
                "invalid_field",
                format!("verification must be `fixed` or `adaptive`, not `{text}`"),
            )
        })?,
    };
    Ok(NewJob {
        name: body.name,
        program,
        redundancy,
        max_replicas,
        priority,
        lease_seconds,
        verification,
        inputs: Vec::new(),
        sink: body.sink.map(|sink| sink.delta),
    })
}

/// Job ids in paths: anything that is not a job id is simply not found.
fn parse_id(raw: &str) -> Result<i64> {
    raw.parse().map_err(|_| Error::NotFound("job"))
}

/// `GET /api/v1/jobs`: the caller's jobs, newest first (at most 1000).
#[utoipa::path(
    get,
    operation_id = "list_jobs",
    summary = "List the caller's jobs",
    path = "/api/v1/jobs",
    tag = "jobs",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's jobs, newest first", body = super::openapi::JobList),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>> {
    let jobs = state.store.jobs(caller.0, 1000).await?;
    Ok(Json(json!({"jobs": jobs})))
}

/// `GET /api/v1/jobs/{id}`
#[utoipa::path(
    get,
    operation_id = "get_job",
    summary = "Get a job",
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = super::openapi::ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>> {
    let id = parse_id(&id)?;
    let view = state
        .store
        .job(caller.0, id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    Ok(Json(view))
}

/// `DELETE /api/v1/jobs/{id}`: cancel; outstanding leases are revoked from their workers.
#[utoipa::path(
    delete,
    operation_id = "cancel_job",
    summary = "Cancel a job",
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled", body = JobView),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = super::openapi::ErrorBody),
        (status = 409, description = "Already finished", body = super::openapi::ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>> {
    let id = parse_id(&id)?;
    let cancellation = state
        .store
        .cancel_job(caller.0, id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    if !cancellation.cancelled {
        return Err(Error::Conflict(format!(
            "job {id} is already {} and cannot be cancelled",
            cancellation.job.state
        )));
    }
    if !cancellation.revoked.is_empty() {
        state
            .scheduler
            .send(Event::Revoked {
                leases: cancellation.revoked,
            })
            .await;
    }
    Ok(Json(cancellation.job))
}

/// `GET /api/v1/jobs/{id}/results`: NDJSON, one line per finished chunk in index order,
/// streamed page by page so a large job never sits in memory: a page is at most
/// [`RESULTS_PAGE_ROWS`] rows and [`RESULTS_PAGE_BYTES`] of text (one larger result goes
/// alone), and at most `max_downloads` stream at once (503 `too_many_downloads` beyond), so
/// downloads hold at most `max_downloads` pages, each as rows and as text (about
/// 2 × 8 MiB, so 128 MiB by default), whatever the outputs.
#[utoipa::path(
    get,
    operation_id = "job_results",
    summary = "Stream a job's results",
    path = "/api/v1/jobs/{id}/results",
    tag = "jobs",
    security(("bearer" = [])),
    params(
        ("id" = i64, Path, description = "Job id"),
        ("format" = Option<String>, Query, description = "`ndjson`, `parquet` (an Apache Parquet file) or `arrow` (an Arrow IPC stream); overrides `Accept`, whose types `application/x-ndjson`, `application/vnd.apache.parquet` and `application/vnd.apache.arrow.stream` choose too (default NDJSON)"),
    ),
    responses(
        (status = 200, description = "The finished chunks in index order. NDJSON: one ResultLine per chunk. Parquet (one row group per page of up to 2000 results) and Arrow IPC (one record batch per page): columns `index` (int32), the output, `agreeing` (int32, null for a failed chunk) and `error` (utf8, null for an accepted one). The output is one typed column per key (int64, float64, bool, utf8) when the first page's outputs are objects of one shape with scalar values, followed by an `output` column holding the JSON text of any row that does not fit them (null for those that do); otherwise a single `output` column with every output's JSON text",
            content(
                (super::openapi::ResultLine = "application/x-ndjson"),
                (Vec<u8> = "application/vnd.apache.parquet"),
                (Vec<u8> = "application/vnd.apache.arrow.stream"),
            )),
        (status = 422, description = "`unknown_format`: `format` is not `ndjson`, `parquet` or `arrow`", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = super::openapi::ErrorBody),
        (status = 410, description = "`results_expired`: the retention (`--retention-days`) deleted this job's results; the job itself remains", body = super::openapi::ErrorBody),
        (status = 503, description = "`too_many_downloads`: the master streams as many downloads as it may (`--max-downloads`); try again after `Retry-After` seconds", body = super::openapi::ErrorBody),
    )
)]
pub async fn results(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let format = crate::export::requested(query.as_deref(), &headers)?;
    let job = state
        .store
        .job(caller.0, id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    crate::retention::ensure_results_kept(&job)?;
    // The place is held by the body's stream, so it is given back when the download ends or
    // its client goes away.
    let permit = super::places::download(&state)?;
    let store = state.store.clone();
    // One page stream for every format; the fetch closure lives as long as the body's
    // stream, and with it the download's place.
    let pages = crate::export::pages(move |after| {
        let _held = &permit;
        let store = store.clone();
        async move {
            store
                .results_page(id, after, RESULTS_PAGE_ROWS, RESULTS_PAGE_BYTES)
                .await
                .map_err(crate::error::Error::from)
        }
    });
    if let Some(format) = format {
        return Ok(crate::export::response(format, id, pages));
    }
    let pages = pages.map(move |page| match page {
        Ok(page) => {
            let mut text = String::new();
            for result in &page {
                text.push_str(&result_line(result));
                text.push('\n');
            }
            Ok(text)
        }
        Err(error) => {
            tracing::error!(?error, job = id, "results stream failed");
            Err(std::io::Error::other("results unavailable"))
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(pages),
    )
        .into_response())
}

/// One NDJSON line. The stored output is already canonical JSON, so it is spliced in as is.
fn result_line(result: &crate::store::ChunkResult) -> String {
    match (&result.output, &result.error) {
        (Some(output), _) => format!(
            r#"{{"index":{},"output":{},"agreeing":{}}}"#,
            result.index,
            output,
            result.agreeing.unwrap_or(0)
        ),
        (None, error) => json!({
            "index": result.index,
            "error": error.as_deref().unwrap_or("failed"),
        })
        .to_string(),
    }
}
