//! `POST /api/v1/jobs`: a job as JSON, or as a multipart form carrying a dataset file.
//!
//! - `application/json`: the job's fields and its `inputs` array. The body is read under
//!   `max_body_bytes`; the fields are parsed first ([`jobs::SubmitJob`], skipping `inputs`),
//!   then the inputs are streamed out of the body one at a time ([`crate::inputs`]), counted,
//!   sized and checked against the kernel as they are read.
//! - `multipart/form-data`: a `job` part (the same fields as JSON, without `inputs`, at most
//!   64 KiB) and an `inputs` part, a Parquet, CSV or NDJSON file (by its content type or its
//!   file name's extension) of at most `max_dataset_bytes`. The file is spooled to an
//!   anonymous temporary file and read a record batch (or a row) at a time
//!   ([`crate::datasets`]): every row becomes one chunk's input object.
//!
//! Either way the job is validated completely before anything is stored, and parsing runs on
//! the blocking pool, not on the threads that serve requests and worker sessions.

use std::io::Seek;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::io::AsyncWriteExt;

use super::jobs::{self, SubmitJob};
use crate::AppState;
use crate::auth::Caller;
use crate::datasets::{self, Format};
use crate::error::{Error, Result};
use crate::inputs::{self, InputCollector, Origin};
use crate::limits::{JOB_PART_BYTES, Limits};
use crate::scheduler::Event;
use crate::store::{JobView, NewJob};

/// The multipart form of `POST /api/v1/jobs` (documentation only).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DatasetSubmission {
    /// The job's fields as JSON, as for an `application/json` submission but without `inputs`.
    #[schema(value_type = String, example = r#"{"kernel": "primes", "redundancy": 2}"#)]
    job: String,
    /// The dataset: a Parquet, CSV (with a header row) or NDJSON file, told apart by the part's
    /// content type (`application/vnd.apache.parquet`, `text/csv`, `application/x-ndjson`) or
    /// its file name's extension (`.parquet`, `.csv`, `.ndjson` / `.jsonl`). Every row is one
    /// chunk's input object, its columns the fields.
    #[schema(value_type = String, format = Binary)]
    inputs: Vec<u8>,
}

/// The route's body limit: the larger of a JSON submission and a multipart one (the JSON path
/// applies its own, smaller limit itself).
pub fn body_limit(limits: &Limits) -> usize {
    limits.max_body_bytes.max(
        limits
            .max_dataset_bytes
            .saturating_add(JOB_PART_BYTES + 64 * 1024),
    )
}

/// `POST /api/v1/jobs`
#[utoipa::path(
    post,
    operation_id = "submit_job",
    summary = "Submit a job",
    description = "As JSON (the fields and an `inputs` array), or as `multipart/form-data` with \
        a `job` part (the fields as JSON) and an `inputs` part (a Parquet, CSV or NDJSON \
        dataset: one chunk per row, the columns as the fields of its input).",
    path = "/api/v1/jobs",
    tag = "jobs",
    security(("bearer" = [])),
    request_body(content(
        (SubmitJob = "application/json"),
        (DatasetSubmission = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored; `Location` names the job", body = JobView),
        (status = 400, description = "The body is not JSON, or not a well-formed multipart form", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 413, description = "Over a limit (inputs, input size, body, dataset file); `quota_exceeded` when this job alone has more chunks than the token's open-chunk quota", body = super::openapi::ErrorBody),
        (status = 415, description = "Neither application/json nor multipart/form-data", body = super::openapi::ErrorBody),
        (status = 422, description = "Unknown kernel or module, invalid input, field or dataset (the message names inputs[i], or the row and column)", body = super::openapi::ErrorBody),
        (status = 429, description = "`quota_exceeded`: over the token's open-chunk quota or its submissions per minute (the message names the quota, its limit and the use); `Retry-After` says when to try again", body = super::openapi::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response> {
    // Counted before the body is read: a flood of submissions costs no parsing.
    state.submissions.take(caller.0)?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let mut job = if essence == "application/json" || essence.ends_with("+json") {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse().ok());
        let body = read_limited(request.into_body(), state.limits.max_body_bytes, declared).await?;
        let limits = state.limits.clone();
        blocking(move || job_from_json(&limits, &body)).await?
    } else if essence == "multipart/form-data" {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|rejection| Error::MalformedBody(rejection.body_text()))?;
        job_from_multipart(&state.limits, multipart).await?
    } else {
        return Err(Error::UnsupportedMediaType(
            "send a job as application/json, or as multipart/form-data with a dataset file".into(),
        ));
    };
    if let Some(sink) = job.sink.take() {
        job.sink = Some(state.sinks.admit(&sink)?);
    }
    // The open-chunk quota and the module's existence are checked in the insert's transaction
    // (see `Store::create_job`): nothing is stored on a refusal.
    let max_open_chunks = crate::quota::open_chunk_limit(&state.limits, caller.0);
    let view = state
        .store
        .create_job(caller.0, job, max_open_chunks)
        .await?;
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
        Json::<JobView>(view),
    )
        .into_response())
}

/// Run a parse on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(anyhow::anyhow!("submission parser: {error}")))?
}

/// The whole body, or 413 past `limit` bytes. Read into one buffer sized by the declared
/// length, so the body is held once (collecting frames and joining them would hold it twice).
async fn read_limited(body: Body, limit: usize, declared: Option<usize>) -> Result<Bytes> {
    let too_large = || {
        Error::TooLarge(format!(
            "a JSON job submission may be at most {limit} bytes"
        ))
    };
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut buffer = Vec::with_capacity(declared.unwrap_or(0));
    let mut body = Limited::new(body, limit);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large());
            }
            Err(error) => {
                return Err(Error::MalformedBody(format!(
                    "the body could not be read: {error}"
                )));
            }
        };
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buffer))
}

/// A JSON submission: fields first, then the inputs streamed.
fn job_from_json(limits: &Limits, body: &[u8]) -> Result<NewJob> {
    let fields: SubmitJob =
        serde_json::from_slice(body).map_err(|error| inputs::json_error(&error))?;
    if fields.inputs.is_none() {
        return Err(Error::invalid(
            "invalid_field",
            "a job needs inputs: a JSON array `inputs`, or a dataset file (multipart/form-data)",
        ));
    }
    let mut job = jobs::validate(limits, fields)?;
    let mut collector = InputCollector::new(limits, &job.program, Origin::JsonArray);
    inputs::read_json_inputs(body, &mut collector)?;
    if collector.is_empty() {
        return Err(Error::invalid("invalid_field", "inputs must not be empty"));
    }
    job.inputs = collector.finish();
    Ok(job)
}

/// A multipart submission: the `job` part's fields, and the `inputs` part's dataset.
async fn job_from_multipart(limits: &Limits, mut multipart: Multipart) -> Result<NewJob> {
    let mut job: Option<NewJob> = None;
    let mut dataset: Option<(std::fs::File, Format)> = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("job") if job.is_none() => {
                let text = read_part(field, JOB_PART_BYTES).await?;
                let fields: SubmitJob =
                    serde_json::from_slice(&text).map_err(|error| inputs::json_error(&error))?;
                if fields.inputs.is_some() {
                    return Err(Error::invalid(
                        "invalid_field",
                        "a multipart job takes its inputs from the `inputs` file part: leave \
                         `inputs` out of the `job` part",
                    ));
                }
                // Checked as soon as it arrives: a bad job is refused before its file is read.
                job = Some(jobs::validate(limits, fields)?);
            }
            Some("inputs") if dataset.is_none() => {
                let format =
                    Format::detect(field.content_type(), field.file_name()).ok_or_else(|| {
                        datasets::invalid_dataset(
                            "cannot tell the dataset's format: give the `inputs` part the \
                             content type application/vnd.apache.parquet, text/csv or \
                             application/x-ndjson, or a file name ending in .parquet, .csv or \
                             .ndjson",
                        )
                    })?;
                dataset = Some((spool(field, limits.max_dataset_bytes).await?, format));
            }
            Some(name @ ("job" | "inputs")) => {
                return Err(Error::invalid(
                    "invalid_field",
                    format!("the form has more than one `{name}` part"),
                ));
            }
            other => {
                return Err(Error::invalid(
                    "invalid_field",
                    format!(
                        "unknown part `{}`: a multipart job has a `job` part (its fields as \
                         JSON) and an `inputs` part (the dataset file)",
                        other.unwrap_or("")
                    ),
                ));
            }
        }
    }
    let mut job = job.ok_or_else(|| {
        Error::invalid(
            "invalid_field",
            "the form has no `job` part (the job's fields as JSON)",
        )
    })?;
    let (file, format) = dataset.ok_or_else(|| {
        Error::invalid(
            "invalid_field",
            "the form has no `inputs` part (a Parquet, CSV or NDJSON file)",
        )
    })?;
    let limits = limits.clone();
    blocking(move || {
        let mut collector = InputCollector::new(&limits, &job.program, Origin::Dataset);
        datasets::read(file, format, &mut collector)?;
        if collector.is_empty() {
            return Err(datasets::invalid_dataset("the dataset has no rows"));
        }
        let inputs = collector.finish();
        job.inputs = inputs;
        Ok(job)
    })
    .await
}

/// A small part's bytes, or 413 past `limit`.
async fn read_part(mut field: Field<'_>, limit: usize) -> Result<Vec<u8>> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if text.len() + chunk.len() > limit {
            return Err(Error::TooLarge(format!(
                "the `job` part may be at most {limit} bytes"
            )));
        }
        text.extend_from_slice(&chunk);
    }
    Ok(text)
}

/// Copy a file part to an anonymous temporary file (gone when closed), or 413 past `limit`.
async fn spool(mut field: Field<'_>, limit: usize) -> Result<std::fs::File> {
    let file = tempfile::tempfile()
        .map_err(|error| Error::Internal(anyhow::anyhow!("dataset spool file: {error}")))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut written = 0usize;
    let io = |error: std::io::Error| Error::Internal(anyhow::anyhow!("dataset spool: {error}"));
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        written += chunk.len();
        if written > limit {
            return Err(Error::TooLarge(format!(
                "a dataset file may be at most {limit} bytes"
            )));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    let mut file = file.into_std().await;
    file.rewind().map_err(io)?;
    Ok(file)
}

fn multipart_error(error: MultipartError) -> Error {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge(error.body_text())
    } else {
        Error::MalformedBody(error.body_text())
    }
}
