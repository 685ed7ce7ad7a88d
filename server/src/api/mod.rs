//! The REST API, version 1, under `/api/v1`, plus the health probes.
//!
//! - [`jobs`]: submit, list, inspect, cancel jobs and stream their results.
//! - [`modules`]: upload and download WebAssembly task modules.
//! - [`tokens`]: the admin creates submitter tokens.
//! - [`health`]: `/healthz` (alive) and `/readyz` (database reachable).
//! - [`json`]: the JSON extractor that turns every body error into the API's error format.
//! - [`events`]: a job's progress as server-sent events; [`chunks`]: its chunk map;
//!   [`image`]: a `mandelbrot` job's picture.
//! - [`volunteers`]: credit, the leaderboard and display names; [`dashboard`]: the dashboard's
//!   live feed (server-sent events).
//! - [`workers`]: the admin lifts a worker identity's blacklist.
//! - [`openapi`]: the OpenAPI document of all of it.

pub mod chunks;
pub mod dashboard;
pub mod events;
pub mod health;
pub mod image;
pub mod jobs;
pub mod json;
pub mod modules;
pub mod openapi;
pub mod tokens;
pub mod volunteers;
pub mod workers;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::AppState;
use crate::error::Error;

/// Routes under `/api/v1`.
pub fn v1() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(jobs::submit).get(jobs::list))
        .route("/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/jobs/{id}/results", get(jobs::results))
        .route("/jobs/{id}/events", get(events::events))
        .route("/jobs/{id}/chunks", get(chunks::map))
        .route("/jobs/{id}/image.png", get(image::image))
        .route("/modules", post(modules::upload))
        .route("/modules/{id}", get(modules::download))
        .route("/tokens", post(tokens::create))
        .route("/workers/{id}/blacklist", delete(workers::lift_blacklist))
        .route("/volunteers", get(volunteers::list))
        .route(
            "/volunteers/me",
            get(volunteers::me).put(volunteers::set_name),
        )
        .route("/dashboard/events", get(dashboard::events))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> Error {
    Error::NotFound("route")
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}
