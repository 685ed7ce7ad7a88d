//! Submitter tokens, admin only: `POST /api/v1/tokens` creates one (returned once; only its
//! SHA-256 is stored), `GET /api/v1/tokens` lists them (never a secret or a digest), and
//! `DELETE /api/v1/tokens/{id}` revokes one: at once on this master, and on masters sharing
//! the database within [`crate::auth::TOKEN_CACHE_TTL`] (their token caches expire).
//! `PATCH /api/v1/tokens/{id}` sets a token's fair-share weight (see
//! [`crate::scheduler::dispatch`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::json::AppJson;
use crate::AppState;
use crate::auth::{Caller, fingerprint, hash_token, new_token};
use crate::error::{Error, Result};

/// The highest fair-share weight (the lowest is 1).
pub const MAX_WEIGHT: i32 = 1000;

/// The body of `PATCH /api/v1/tokens/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenChange {
    /// The token's share of the workers against other submitters' (1 to 1000; every token
    /// starts at 1, the admin's own jobs count as weight 1).
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: i32,
}

/// Longest token label, in characters.
pub const MAX_LABEL_CHARS: usize = 100;

/// The optional body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who or what the token is for (at most 100 characters, no control characters).
    pub label: Option<String>,
}

fn admin_only(caller: Caller, what: &'static str) -> Result<()> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(Error::Forbidden(what))
    }
}

/// Create a submitter token (admin only).
#[utoipa::path(
    post,
    operation_id = "create_token",
    summary = "Create a submitter token",
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    request_body(content = Option<NewToken>, description = "Optional: a label for the token", content_type = "application/json"),
    responses(
        (status = 201, description = "The new token, shown once", body = super::openapi::TokenCreated),
        (status = 400, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Not the admin token", body = super::openapi::ErrorBody),
        (status = 415, description = "A body that is not declared application/json", body = super::openapi::ErrorBody),
        (status = 422, description = "An unknown field, or a label too long or with control characters", body = super::openapi::ErrorBody),
        (status = 429, description = "Too many failed authentications from this network (`Retry-After`)", body = super::openapi::ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    admin_only(caller, "only the admin token may create tokens")?;
    let label = parse_label(&headers, &body)?;
    let token = new_token();
    let id = state
        .store
        .create_token(&hash_token(&token), label.as_deref())
        .await?;
    tracing::info!(
        token = id,
        fingerprint = %fingerprint(&token),
        "submitter token created"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "token": token, "label": label})),
    ))
}

/// The label of a create request: none for an empty body.
fn parse_label(headers: &HeaderMap, body: &[u8]) -> Result<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Error::UnsupportedMediaType(
            "a body must be declared `Content-Type: application/json`".into(),
        ));
    }
    let request: NewToken = serde_json::from_slice(body).map_err(|error| {
        if error.is_data() {
            Error::invalid("invalid_field", error.to_string())
        } else {
            Error::MalformedJson(error.to_string())
        }
    })?;
    let Some(label) = request.label else {
        return Ok(None);
    };
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(Error::invalid(
            "invalid_field",
            format!("label: at most {MAX_LABEL_CHARS} characters"),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(Error::invalid(
            "invalid_field",
            "label: no control characters",
        ));
    }
    Ok(Some(label))
}

/// List submitter tokens (admin only).
#[utoipa::path(
    get,
    operation_id = "list_tokens",
    summary = "List submitter tokens",
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every submitter token, revoked ones included, oldest first; never a token or its digest", body = super::openapi::TokenList),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Not the admin token", body = super::openapi::ErrorBody),
        (status = 429, description = "Too many failed authentications from this network (`Retry-After`)", body = super::openapi::ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>> {
    admin_only(caller, "only the admin token may list tokens")?;
    let tokens = state.store.tokens().await?;
    Ok(Json(json!({"tokens": tokens})))
}

/// Revoke a submitter token (admin only).
#[utoipa::path(
    delete,
    operation_id = "revoke_token",
    summary = "Revoke a submitter token",
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = i64, Path, description = "The token's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token no longer works: at once on this master, within 5 s on masters sharing the database. Its jobs are left as they are.", body = super::openapi::TokenRevoked),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Not the admin token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such token", body = super::openapi::ErrorBody),
        (status = 409, description = "The token is revoked already", body = super::openapi::ErrorBody),
        (status = 429, description = "Too many failed authentications from this network (`Retry-After`)", body = super::openapi::ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    admin_only(caller, "only the admin token may revoke tokens")?;
    let id: i64 = id.parse().map_err(|_| Error::NotFound("token"))?;
    match state.store.revoke_token(id).await? {
        None => Err(Error::NotFound("token")),
        Some(false) => Err(Error::Conflict(format!("token {id} is revoked already"))),
        Some(true) => {
            state.tokens.forget(id);
            tracing::info!(token = id, "submitter token revoked");
            Ok(Json(json!({"id": id, "revoked": true})))
        }
    }
}

/// Set a submitter token's fair-share weight (admin only).
#[utoipa::path(
    patch,
    operation_id = "update_token",
    summary = "Set a submitter token's fair-share weight",
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = i64, Path, description = "The token's id")),
    request_body(content = TokenChange, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token, with its new weight: its jobs get that share of the workers from the next dispatch on", body = crate::store::TokenView),
        (status = 400, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Not the admin token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such token", body = super::openapi::ErrorBody),
        (status = 415, description = "A body that is not declared application/json", body = super::openapi::ErrorBody),
        (status = 422, description = "An unknown field, or a weight outside 1..=1000", body = super::openapi::ErrorBody),
        (status = 429, description = "Too many failed authentications from this network (`Retry-After`)", body = super::openapi::ErrorBody),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    AppJson(change): AppJson<TokenChange>,
) -> Result<Json<crate::store::TokenView>> {
    admin_only(caller, "only the admin token may change tokens")?;
    let id: i64 = id.parse().map_err(|_| Error::NotFound("token"))?;
    if !(1..=MAX_WEIGHT).contains(&change.weight) {
        return Err(Error::invalid(
            "invalid_field",
            format!("weight: 1 to {MAX_WEIGHT}"),
        ));
    }
    let token = state
        .store
        .set_token_weight(id, change.weight)
        .await?
        .ok_or(Error::NotFound("token"))?;
    // New work is dispatched by the new share once the cache reloads.
    state
        .scheduler
        .try_send(crate::scheduler::Event::WorkAvailable);
    tracing::info!(
        token = id,
        weight = change.weight,
        "submitter token weight set"
    );
    Ok(Json(token))
}
