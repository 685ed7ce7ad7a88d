//! Task modules: `POST /api/v1/modules` (upload), `GET /api/v1/modules/{id}` (download) and
//! `DELETE /api/v1/modules/{id}` (its uploader or the admin, while no unfinished job uses it).
//!
//! A module is checked against the task ABI (`grid-task-abi`, `docs/task-abi.md`) before it is
//! stored, and stored under its content address `sha256:<hex>`: uploading the same bytes again
//! changes nothing and answers the same id. Downloads need no token — workers fetch modules by
//! id, and the id is the hash of the bytes, so a response never changes and is cached forever.
//! Any submitter may run a job on any module whose id it knows.
//!
//! When a job starts, every worker downloads its module at about the same time: the master
//! keeps recently downloaded modules in memory ([`ModuleCache`]) so that a thousand volunteers
//! cost one database read, not a thousand — also while the first read is under way (one load
//! per module at a time, the others wait for it).
//!
//! Uploads count against the uploader's quotas ([`crate::quota`]): its submissions per minute,
//! and the bytes of its stored modules (a module stored already costs nothing). Deleting a
//! module gives its bytes back and drops it from this master's cache; other masters sharing the
//! database may serve it from their caches until it is evicted there, but no job can use it.

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

impl ModuleCache {
    /// The module `id` from memory, or loaded by `load` if absent: while one load is under
    /// way, other callers for the same id wait for it instead of loading again (a failed load
    /// lets the next caller try).
    pub async fn get_or_load(
        &self,
        id: &str,
        load: impl Future<Output = Result<Bytes>>,
    ) -> Result<Bytes> {
        self.0.get_or_insert_async(id, load).await
    }

    /// Forget a module (it was deleted).
    pub fn remove(&self, id: &str) {
        self.0.remove(id);
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
        (status = 413, description = "Over the module size limit, or alone over the token's max_module_bytes", body = super::openapi::ErrorBody),
        (status = 429, description = "Over a quota of the token (`quota_exceeded`: max_module_bytes, max_submissions_per_minute); see Retry-After", body = super::openapi::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds before trying again may succeed"))),
        (status = 415, description = "Declared as something other than application/wasm", body = super::openapi::ErrorBody),
        (status = 422, description = "Not WebAssembly, or not following the task ABI", body = super::openapi::ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    _slot: crate::quota::SubmissionSlot,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
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
    let new = crate::quota::store_module(&state, caller.0, &id, &bytes).await?
        == crate::store::ModuleStored::New;
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
    let store = state.store.clone();
    let bytes = state
        .module_cache
        .get_or_load(&id, async {
            metrics::counter!("grid_module_loads_total").increment(1);
            let bytes = store
                .module_bytes(&id)
                .await?
                .ok_or(Error::NotFound("module"))?;
            Ok(Bytes::from(bytes))
        })
        .await?;
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

/// `DELETE /api/v1/modules/{id}`: its uploader or the admin deletes a module no unfinished job
/// uses; its bytes no longer count against the uploader.
#[utoipa::path(
    delete,
    operation_id = "delete_module",
    summary = "Delete a task module",
    path = "/api/v1/modules/{id}",
    tag = "modules",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Module id, `sha256:<hex>`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Neither the module's uploader nor the admin", body = super::openapi::ErrorBody),
        (status = 404, description = "No such module", body = super::openapi::ErrorBody),
        (status = 409, description = "A queued or running job uses it", body = super::openapi::ErrorBody),
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
        ModuleDeletion::Deleted { size } => {
            state.module_cache.remove(&id);
            tracing::info!(module = %id, size, "module deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        ModuleDeletion::NotFound => Err(Error::NotFound("module")),
        ModuleDeletion::NotOwner => Err(Error::Forbidden(
            "only the module's uploader or the admin may delete it",
        )),
        ModuleDeletion::InUse { job } => Err(Error::Conflict(format!(
            "job {job} (queued or running) uses module {id}; it can be deleted once no \
             unfinished job does"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_downloads_of_an_uncached_module_load_it_once() {
        let cache = ModuleCache::default();
        let loads = Arc::new(AtomicUsize::new(0));
        let downloads: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                let loads = loads.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_load("sha256:m", async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            // A slow database: every other download arrives meanwhile.
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            Ok(Bytes::from_static(b"\0asm"))
                        })
                        .await
                })
            })
            .collect();
        for download in downloads {
            let bytes = download.await.expect("task").expect("module");
            assert_eq!(&bytes[..], b"\0asm");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // A failed load is not cached: the next caller loads again.
        let missing = cache
            .get_or_load("sha256:gone", async { Err(Error::NotFound("module")) })
            .await;
        assert!(matches!(missing, Err(Error::NotFound(_))));
        cache.remove("sha256:m");
        let again = cache
            .get_or_load("sha256:m", async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(Bytes::from_static(b"new"))
            })
            .await
            .expect("module");
        assert_eq!(&again[..], b"new");
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }
}
