//! Liveness and readiness probes (no token needed).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::Result;

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    operation_id = "healthz",
    summary = "Liveness",
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = super::openapi::Status),
    )
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database answers.
#[utoipa::path(
    get,
    operation_id = "readyz",
    summary = "Readiness",
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers", body = super::openapi::Status),
        (status = 503, description = "The database does not answer", body = super::openapi::ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>> {
    state.store.ping().await?;
    Ok(Json(json!({"status": "ready"})))
}
