//! Jobs: `POST /api/v1/jobs`, `GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`,
//! `DELETE /api/v1/jobs/{id}`, `GET /api/v1/jobs/{id}/results` (NDJSON).
//!
//! Submissions are validated completely (kernel, every input, every field) before anything is
//! stored; a submitter sees only its own jobs, and someone else's job answers 404.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::json::AppJson;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
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
/// Finished chunks read from the database per results page.
const RESULTS_PAGE: i64 = 2_000;

/// The body of `POST /api/v1/jobs`.
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
    /// One JSON value per chunk.
    inputs: Vec<Value>,
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
    if body.module.is_none() && (body.timeout_ms.is_some() || body.max_memory_mb.is_some()) {
        return Err(Error::invalid(
            "invalid_field",
            "timeout_ms and max_memory_mb apply to module jobs only",
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
            Ok(Program::Module {
                id: module.clone(),
                timeout_ms,
                max_memory_mb,
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

fn validate(state: &AppState, body: SubmitJob) -> Result<NewJob> {
    let limits = &state.limits;
    let program = program(&body)?;
    if body.inputs.is_empty() {
        return Err(Error::invalid("invalid_field", "inputs must not be empty"));
    }
    if body.inputs.len() > limits.max_inputs_per_job {
        return Err(Error::TooLarge(format!(
            "a job may have at most {} inputs, this one has {}",
            limits.max_inputs_per_job,
            body.inputs.len()
        )));
    }
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
        None | Some("fixed") => "fixed",
        Some("adaptive") => "adaptive",
        Some(other) => {
            return Err(Error::invalid(
                "invalid_field",
                format!("verification must be `fixed` or `adaptive`, not `{other}`"),
            ));
        }
    };
    let mut inputs = Vec::with_capacity(body.inputs.len());
    for (index, input) in body.inputs.iter().enumerate() {
        let canonical = grid_protocol::canonical_json(input);
        if canonical.len() > limits.max_input_bytes {
            return Err(Error::TooLarge(format!(
                "inputs[{index}] is {} bytes; an input may be at most {} bytes",
                canonical.len(),
                limits.max_input_bytes
            )));
        }
        // A kernel's inputs are checked here; a module's are its own business (a module that
        // refuses an input fails that chunk, the same way on every worker).
        if let Program::Kernel(kernel) = &program {
            grid_kernels::validate(kernel, input).map_err(|error| {
                Error::invalid("invalid_input", format!("inputs[{index}]: {error}"))
            })?;
        }
        inputs.push(canonical);
    }
    Ok(NewJob {
        name: body.name,
        program,
        redundancy,
        max_replicas,
        priority,
        lease_seconds,
        verification,
        inputs,
    })
}

/// Job ids in paths: anything that is not a job id is simply not found.
fn parse_id(raw: &str) -> Result<i64> {
    raw.parse().map_err(|_| Error::NotFound("job"))
}

/// `POST /api/v1/jobs`
#[utoipa::path(
    post,
    operation_id = "submit_job",
    summary = "Submit a job",
    path = "/api/v1/jobs",
    tag = "jobs",
    security(("bearer" = [])),
    request_body = SubmitJob,
    responses(
        (status = 201, description = "Stored; `Location` names the job", body = JobView),
        (status = 400, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 413, description = "Over a limit (inputs, input size, body)", body = super::openapi::ErrorBody),
        (status = 415, description = "Not sent as application/json", body = super::openapi::ErrorBody),
        (status = 422, description = "Unknown kernel or module, invalid input or field", body = super::openapi::ErrorBody),
        (status = 429, description = "Over a quota of the token (`quota_exceeded`: max_open_chunks, max_submissions_per_minute); see Retry-After", body = super::openapi::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds before trying again may succeed"))),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    _slot: crate::quota::SubmissionSlot,
    AppJson(body): AppJson<SubmitJob>,
) -> Result<Response> {
    let job = validate(&state, body)?;
    if let Program::Module { id, .. } = &job.program
        && !state.store.module_exists(id).await?
    {
        return Err(Error::invalid(
            "unknown_module",
            format!("no module `{id}` has been uploaded (POST /api/v1/modules)"),
        ));
    }
    let _admitted = crate::quota::admit_job(&state, caller.0, job.inputs.len()).await?;
    let view = state.store.create_job(caller.0, job).await?;
    state.scheduler.try_send(Event::WorkAvailable);
    tracing::info!(
        job = view.id,
        chunks = view.chunks.total,
        kernel = view.kernel.as_deref(),
        module = view.module.as_deref(),
        "job submitted"
    );
    let location = format!("/api/v1/jobs/{}", view.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
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
/// streamed page by page so a large job never sits in memory.
#[utoipa::path(
    get,
    operation_id = "job_results",
    summary = "Stream a job's results",
    path = "/api/v1/jobs/{id}/results",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "NDJSON: one ResultLine per finished chunk, in index order",
            content_type = "application/x-ndjson", body = super::openapi::ResultLine),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = super::openapi::ErrorBody),
        (status = 410, description = "The results were deleted by the master's retention (`results_expired`)", body = super::openapi::ErrorBody),
    )
)]
pub async fn results(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let job = state
        .store
        .job(caller.0, id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    crate::retention::ensure_results_kept(&job)?;
    let store = state.store.clone();
    let pages = stream::unfold(Some(-1), move |after| {
        let store = store.clone();
        async move {
            let after = after?;
            match store.results_page(id, after, RESULTS_PAGE).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = page.last().map(|r| r.index);
                    let mut text = String::new();
                    for result in &page {
                        text.push_str(&result_line(result));
                        text.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(text), next))
                }
                Err(error) => {
                    tracing::error!(?error, job = id, "results stream failed");
                    Some((Err(std::io::Error::other("results unavailable")), None))
                }
            }
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
