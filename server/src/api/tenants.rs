//! A tenant's share: `GET` and `PUT /api/v1/tokens/{id}/share`.
//!
//! The admin sets each submitter token's fair-share weight (dispatch across tenants, see
//! [`crate::scheduler::dispatch`]) and its quota overrides ([`crate::quota`]); a submitter may
//! read its own (`{id}` may be `me`). The answer shows the settings, the limits in force and
//! what the tenant holds against them.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::json::AppJson;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::quota::TenantLimits;
use crate::scheduler::Event;
use crate::store::{MAX_WEIGHT, Owner, TenantSettings};

/// Largest `max_open_chunks` override.
const MAX_OPEN_CHUNKS_CEILING: i64 = 1_000_000_000_000;
/// Largest `max_module_bytes` override (1 TiB).
const MAX_MODULE_BYTES_CEILING: i64 = 1 << 40;
/// Largest `max_submissions_per_minute` override.
const MAX_SUBMISSIONS_CEILING: i64 = 1_000_000;

/// The body of `PUT /api/v1/tokens/{id}/share`. It replaces the settings: an absent limit is the
/// master's default, an absent weight is 1.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetShare {
    /// Fair-share weight, 1 to 1000 (default 1): backlogged tenants get replicas in
    /// proportion to their weights.
    weight: Option<i64>,
    /// Most open (undecided) chunks over the token's queued and running jobs; 0: no limit;
    /// absent or null: the master's `--max-open-chunks`.
    max_open_chunks: Option<i64>,
    /// Most bytes of the token's stored modules; 0: no limit; absent or null: the master's
    /// `--max-tenant-module-bytes`.
    max_module_bytes: Option<i64>,
    /// Most job submissions and module uploads per minute; 0: no limit; absent or null: the
    /// master's `--max-submissions-per-minute`.
    max_submissions_per_minute: Option<i64>,
}

/// A tenant's share as `GET` and `PUT /api/v1/tokens/{id}/share` answer it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShareView {
    /// The submitter token's id.
    pub token_id: i64,
    /// Fair-share weight.
    pub weight: i32,
    /// The admin's overrides (null: the master's default; 0: no limit).
    pub overrides: QuotaOverrides,
    /// The limits in force (null: no limit).
    pub limits: LimitsInForce,
    /// What the token holds against them.
    pub usage: Usage,
}

/// Quota overrides of a token (null: the master's default; 0: no limit).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuotaOverrides {
    /// Open chunks.
    pub max_open_chunks: Option<i64>,
    /// Stored module bytes.
    pub max_module_bytes: Option<i64>,
    /// Submissions per minute.
    pub max_submissions_per_minute: Option<i32>,
}

/// A token's limits in force (null: no limit).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitsInForce {
    /// Open chunks.
    pub max_open_chunks: Option<u64>,
    /// Stored module bytes.
    pub max_module_bytes: Option<u64>,
    /// Submissions per minute.
    pub max_submissions_per_minute: Option<u32>,
}

/// What a token holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Chunks not yet decided over its queued and running jobs.
    pub open_chunks: i64,
    /// Bytes of its stored modules.
    pub module_bytes: i64,
}

/// The token a path names for `caller`: an id, or `me` for a submitter's own.
fn token_for(caller: Caller, raw: &str) -> Result<i64> {
    let id = match (raw, caller.0) {
        ("me", Owner::Submitter(own)) => own,
        ("me", Owner::Admin) => {
            return Err(Error::invalid(
                "invalid_field",
                "the admin token is no tenant: name a submitter token's id",
            ));
        }
        _ => raw.parse().map_err(|_| Error::NotFound("token"))?,
    };
    match caller.0 {
        Owner::Admin => Ok(id),
        Owner::Submitter(own) if own == id => Ok(id),
        // Other tokens are not the caller's business, not even their existence.
        Owner::Submitter(_) => Err(Error::NotFound("token")),
    }
}

fn in_range(field: &str, value: i64, range: std::ops::RangeInclusive<i64>) -> Result<i64> {
    if range.contains(&value) {
        Ok(value)
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

fn validate(body: SetShare) -> Result<TenantSettings> {
    let weight = in_range(
        "weight",
        body.weight.unwrap_or(1),
        1..=i64::from(MAX_WEIGHT),
    )?;
    let limit = |field: &str, value: Option<i64>, ceiling: i64| {
        value
            .map(|value| in_range(field, value, 0..=ceiling))
            .transpose()
    };
    Ok(TenantSettings {
        weight: i32::try_from(weight).unwrap_or(1),
        max_open_chunks: limit(
            "max_open_chunks",
            body.max_open_chunks,
            MAX_OPEN_CHUNKS_CEILING,
        )?,
        max_module_bytes: limit(
            "max_module_bytes",
            body.max_module_bytes,
            MAX_MODULE_BYTES_CEILING,
        )?,
        max_submissions_per_minute: limit(
            "max_submissions_per_minute",
            body.max_submissions_per_minute,
            MAX_SUBMISSIONS_CEILING,
        )?
        .map(|value| i32::try_from(value).unwrap_or(i32::MAX)),
    })
}

async fn view(state: &AppState, token_id: i64, settings: TenantSettings) -> Result<ShareView> {
    let limits = TenantLimits::resolve(&settings, state.quota.defaults());
    let usage = state.store.tenant_usage(token_id).await?;
    Ok(ShareView {
        token_id,
        weight: settings.weight,
        overrides: QuotaOverrides {
            max_open_chunks: settings.max_open_chunks,
            max_module_bytes: settings.max_module_bytes,
            max_submissions_per_minute: settings.max_submissions_per_minute,
        },
        limits: LimitsInForce {
            max_open_chunks: limits.max_open_chunks,
            max_module_bytes: limits.max_module_bytes,
            max_submissions_per_minute: limits.max_submissions_per_minute,
        },
        usage: Usage {
            open_chunks: usage.open_chunks,
            module_bytes: usage.module_bytes,
        },
    })
}

/// `GET /api/v1/tokens/{id}/share`: the admin, or the token itself (`me`).
#[utoipa::path(
    get,
    operation_id = "get_token_share",
    summary = "A submitter token's fair-share weight, quotas and usage",
    path = "/api/v1/tokens/{id}/share",
    tag = "tokens",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Token id, or `me` for the caller's own")),
    responses(
        (status = 200, description = "The token's share", body = ShareView),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such token (or not the caller's)", body = super::openapi::ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ShareView>> {
    let token_id = token_for(caller, &id)?;
    let settings = state
        .store
        .tenant(token_id)
        .await?
        .ok_or(Error::NotFound("token"))?;
    Ok(Json(view(&state, token_id, settings).await?))
}

/// `PUT /api/v1/tokens/{id}/share`: the admin sets a token's weight and quota overrides.
#[utoipa::path(
    put,
    operation_id = "set_token_share",
    summary = "Set a submitter token's fair-share weight and quota overrides",
    path = "/api/v1/tokens/{id}/share",
    tag = "tokens",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Token id")),
    request_body = SetShare,
    responses(
        (status = 200, description = "The token's share now", body = ShareView),
        (status = 400, description = "The body is not JSON", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 403, description = "Not the admin token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such token", body = super::openapi::ErrorBody),
        (status = 422, description = "A field out of range, or unknown", body = super::openapi::ErrorBody),
    )
)]
pub async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    AppJson(body): AppJson<SetShare>,
) -> Result<Json<ShareView>> {
    if !caller.is_admin() {
        return Err(Error::Forbidden(
            "only the admin token may set weights and quotas",
        ));
    }
    let token_id = id.parse().map_err(|_| Error::NotFound("token"))?;
    let settings = validate(body)?;
    if !state.store.set_tenant(token_id, &settings).await? {
        return Err(Error::NotFound("token"));
    }
    state.quota.forget(token_id);
    // The dispatch cache carries weights: reload it so the new one counts at once.
    state.scheduler.try_send(Event::WorkAvailable);
    tracing::info!(
        token = token_id,
        weight = settings.weight,
        "tenant share set"
    );
    Ok(Json(view(&state, token_id, settings).await?))
}
