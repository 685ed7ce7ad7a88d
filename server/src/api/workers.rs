//! `DELETE /api/v1/workers/{id}/blacklist`: the admin lifts a worker identity's blacklist (an
//! honest volunteer caught by a bug, a module that split engines before that was recognised).
//! The identity starts again from nothing: no trust, no invalid results on record.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};

/// Lift a worker identity's blacklist (admin only).
#[utoipa::path(
    delete,
    operation_id = "lift_blacklist",
    summary = "Lift a worker's blacklist",
    path = "/api/v1/workers/{id}/blacklist",
    tag = "workers",
    params(("id" = String, Path, description = "The worker identity")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The identity may work again, with a fresh reputation", body = Object),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Not the admin token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such worker identity", body = super::openapi::ErrorBody),
    )
)]
pub async fn lift_blacklist(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    if !caller.is_admin() {
        return Err(Error::Forbidden(
            "only the admin token may lift a blacklist",
        ));
    }
    if !grid_protocol::is_valid_worker_id(&id) || !state.store.lift_blacklist(&id).await? {
        return Err(Error::NotFound("worker"));
    }
    tracing::info!("a worker's blacklist was lifted by the admin");
    Ok(Json(json!({"id": id, "blacklisted": false})))
}
