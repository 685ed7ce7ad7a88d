//! The REST API, version 1, under `/api/v1`, plus the health probes.
//!
//! - [`jobs`]: submit, list, inspect, cancel jobs and stream their results.
//! - [`tokens`]: the admin creates submitter tokens.
//! - [`health`]: `/healthz` (alive) and `/readyz` (database reachable).
//! - [`json`]: the JSON extractor that turns every body error into the API's error format.

pub mod health;
pub mod jobs;
pub mod json;
pub mod tokens;

use axum::Router;
use axum::routing::{get, post};

use crate::AppState;
use crate::error::Error;

/// Routes under `/api/v1`.
pub fn v1() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(jobs::submit).get(jobs::list))
        .route("/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/jobs/{id}/results", get(jobs::results))
        .route("/tokens", post(tokens::create))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> Error {
    Error::NotFound("route")
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}
