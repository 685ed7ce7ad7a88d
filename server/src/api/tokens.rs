//! `POST /api/v1/tokens`: the admin creates a submitter token. The token is returned once;
//! only its SHA-256 is stored.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Caller, hash_token, new_token};
use crate::error::{Error, Result};

/// Create a submitter token (admin only).
#[utoipa::path(
    post,
    operation_id = "create_token",
    summary = "Create a submitter token",
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new token, shown once", body = super::openapi::TokenCreated),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Not the admin token", body = super::openapi::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<Value>)> {
    if !caller.is_admin() {
        return Err(Error::Forbidden("only the admin token may create tokens"));
    }
    let token = new_token();
    let id = state.store.create_token(&hash_token(&token)).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "token": token}))))
}
