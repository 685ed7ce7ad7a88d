//! Task modules: `POST /api/v1/modules` (upload), `GET /api/v1/modules/{id}` (download) and
//! `DELETE /api/v1/modules/{id}`.
//!
//! A module is checked against the task ABI (`grid-task-abi`, `docs/task-abi.md`) before it is
//! stored, and stored under its content address `sha256:<hex>`: uploading the same bytes again
//! changes nothing and answers the same id. Downloads need no token — workers fetch modules by
//! id, and the id is the hash of the bytes, so a response never changes and is cached forever.
//! Any submitter may run a job on any module whose id it knows.
//!
//! Each uploader *holds* the modules it uploaded (`module_uploads`; several tenants may hold
//! the same bytes), and each hold counts against that token's module-byte quota
//! ([`crate::quota`]). Deleting drops the caller's hold (the admin's drops every hold); the
//! bytes go with the last hold, and only if no unfinished job runs the module, so one tenant's
//! deletion never breaks another tenant's jobs.
//!
//! When a job starts, every worker downloads its module at about the same time: the master
//! keeps recently downloaded modules in memory ([`ModuleCache`]) so that a thousand volunteers
//! cost one database read, not a thousand.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::ModuleDeletion;

/// Bytes of module kept in memory by [`ModuleCache`].
const CACHED_MODULE_BYTES: u64 = 64 * 1024 * 1024;

/// Recently downloaded modules by id, up to [`CACHED_MODULE_BYTES`] in all. Modules never
/// change once stored (the id is their hash), so nothing here is ever stale.
#[derive(Clone)]
pub struct ModuleCache(std::sync::Arc<quick_cache::sync::Cache<String, Bytes, ByLength>>);

/// A cached module weighs its length.
#[derive(Debug, Clone)]
struct ByLength;

impl quick_cache::Weighter<String, Bytes> for ByLength {
    fn weight(&self, _id: &String, bytes: &Bytes) -> u64 {
        bytes.len() as u64
    }
}

impl Default for ModuleCache {
    fn default() -> Self {
        ModuleCache(std::sync::Arc::new(
            quick_cache::sync::Cache::with_weighter(64, CACHED_MODULE_BYTES, ByLength),
        ))
    }
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("modules", &self.0.len())
            .field("bytes", &self.0.weight())
            .finish()
    }
}

/// Media types an upload may be declared as (or none at all).
const ACCEPTED_TYPES: &[&str] = &["application/wasm", "application/octet-stream"];

/// The answer to an upload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadedModule {
    /// The module's id: `sha256:` and the hex SHA-256 of its bytes.
    pub id: String,
    /// Its size in bytes.
    pub size: usize,
}

/// `POST /api/v1/modules`: the body is the module's raw bytes.
#[utoipa::path(
    post,
    operation_id = "upload_module",
    summary = "Upload a WebAssembly task module",
    path = "/api/v1/modules",
    tag = "modules",
    security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/wasm",
        description = "The module's bytes (docs/task-abi.md)"),
    responses(
        (status = 201, description = "Stored (or already stored: same id)", body = UploadedModule),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 413, description = "Over the module size limit; `quota_exceeded` when this module alone is over the token's module-byte quota", body = super::openapi::ErrorBody),
        (status = 415, description = "Declared as something other than application/wasm", body = super::openapi::ErrorBody),
        (status = 422, description = "Not WebAssembly, or not following the task ABI", body = super::openapi::ErrorBody),
        (status = 429, description = "`quota_exceeded`: over the token's module-byte quota or its submissions per minute (the message names the quota, its limit and the use); `Retry-After` says when to try again", body = super::openapi::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    // Counted before the body is read (module uploads share the submission rate with jobs).
    state.submissions.take(caller.0)?;
    if let Some(declared) = headers.get(header::CONTENT_TYPE) {
        let media_type = declared
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !ACCEPTED_TYPES.contains(&media_type.as_str()) {
            return Err(Error::UnsupportedMediaType(format!(
                "send the module's bytes as application/wasm, not {media_type}"
            )));
        }
    }
    let limit = state.limits.max_module_bytes;
    let too_large = || {
        Error::TooLarge(format!(
            "a module may be at most {limit} bytes (the master's --max-module-bytes)"
        ))
    };
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared_length.unwrap_or(0).min(limit as u64) as usize);
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|_| Error::MalformedJson("the upload was cut short".into()))?;
        if bytes.len() + piece.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&piece);
    }
    let info = grid_task_abi::check_module(&bytes)
        .map_err(|error| Error::invalid("invalid_module", error.to_string()))?;
    let id = grid_task_abi::module_id(&bytes);
    let max_bytes = crate::quota::module_byte_limit(&state.limits, caller.0);
    let new = state
        .store
        .put_module(caller.0, &id, &bytes, max_bytes)
        .await?;
    tracing::info!(module = %id, size = bytes.len(), new, initial_pages = info.initial_pages, "module uploaded");
    let location = format!("/api/v1/modules/{id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(UploadedModule {
            id,
            size: bytes.len(),
        }),
    )
        .into_response())
}

/// `GET /api/v1/modules/{id}`: the module's bytes, cached forever (the id is their hash).
#[utoipa::path(
    get,
    operation_id = "get_module",
    summary = "Download a task module",
    path = "/api/v1/modules/{id}",
    tag = "modules",
    params(("id" = String, Path, description = "Module id, `sha256:<hex>`")),
    responses(
        (status = 200, description = "The module", content_type = "application/wasm", body = Vec<u8>),
        (status = 304, description = "Not modified (If-None-Match matched)"),
        (status = 404, description = "No such module", body = super::openapi::ErrorBody),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    if !grid_task_abi::is_module_id(&id) {
        return Err(Error::NotFound("module"));
    }
    let etag = format!("\"{id}\"");
    let caching = [
        (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
    if matches
        && (state.module_cache.0.get(&id).is_some() || state.store.module_exists(&id).await?)
    {
        return Ok((StatusCode::NOT_MODIFIED, caching, [(header::ETAG, etag)]).into_response());
    }
    let bytes = match state.module_cache.0.get(&id) {
        Some(bytes) => bytes,
        None => {
            let bytes = Bytes::from(
                state
                    .store
                    .module_bytes(&id)
                    .await?
                    .ok_or(Error::NotFound("module"))?,
            );
            state.module_cache.0.insert(id.clone(), bytes.clone());
            bytes
        }
    };
    let etag = HeaderValue::from_str(&etag).map_err(|error| Error::Internal(error.into()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/wasm"),
        )],
        caching,
        [(header::ETAG, etag)],
        bytes,
    )
        .into_response())
}

/// `DELETE /api/v1/modules/{id}`: drop the caller's hold on a module it uploaded (the admin:
/// every hold), freeing its bytes from the caller's quota.
#[utoipa::path(
    delete,
    operation_id = "delete_module",
    summary = "Delete an uploaded task module",
    description = "Drops the caller's hold on a module it uploaded (the admin's drops every \
        hold) and gives its bytes back to the caller's module-byte quota. The module's bytes are \
        deleted once nobody holds it any more. Refused while an unfinished job of the caller runs \
        it, or, when the bytes would go, while any unfinished job does.",
    path = "/api/v1/modules/{id}",
    tag = "modules",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Module id, `sha256:<hex>`")),
    responses(
        (status = 204, description = "Deleted (the caller no longer holds it)"),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such module, or the caller did not upload it", body = super::openapi::ErrorBody),
        (status = 409, description = "`module_in_use`: an unfinished job runs it", body = super::openapi::ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if !grid_task_abi::is_module_id(&id) {
        return Err(Error::NotFound("module"));
    }
    match state.store.delete_module(caller.0, &id).await? {
        ModuleDeletion::NotFound => Err(Error::NotFound("module")),
        ModuleDeletion::InUse => Err(Error::ConflictWith {
            code: "module_in_use",
            message: format!(
                "module `{id}` is run by an unfinished job: cancel it or wait until it finishes"
            ),
        }),
        ModuleDeletion::Deleted { bytes_removed } => {
            if bytes_removed {
                // Other masters' caches keep serving the (immutable) bytes until evicted; the
                // jobs that could ask for them are all finished.
                state.module_cache.0.remove(&id);
            }
            tracing::info!(module = %id, bytes_removed, "module deleted");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
