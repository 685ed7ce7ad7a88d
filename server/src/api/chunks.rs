//! `GET /api/v1/jobs/{id}/chunks`: the state of every chunk of a job, one letter each, for the
//! dashboard's chunk map.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};

/// A job's chunk map.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChunkMap {
    /// Chunks in the job.
    pub total: usize,
    /// One letter per chunk in index order: `o` open and waiting, `r` open with a worker on
    /// it, `d` accepted, `f` failed, `c` cancelled.
    pub states: String,
}

/// The state of every chunk of a job.
#[utoipa::path(
    get,
    operation_id = "chunk_map",
    path = "/api/v1/jobs/{id}/chunks",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "One letter per chunk", body = ChunkMap),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = super::openapi::ErrorBody),
    )
)]
pub async fn map(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ChunkMap>> {
    let id: i64 = id.parse().map_err(|_| Error::NotFound("job"))?;
    state
        .insights
        .job_progress(caller.0, id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    let letters = state.insights.chunk_map(id).await?;
    let states = String::from_utf8(letters)
        .map_err(|error| Error::Internal(anyhow::anyhow!("chunk map: {error}")))?;
    Ok(Json(ChunkMap {
        total: states.len(),
        states,
    }))
}
