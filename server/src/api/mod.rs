//! The REST API, version 1, under `/api/v1`, plus the health probes.
//!
//! - [`submit`]: submit a job, as JSON or as a multipart form with a dataset file.
//! - [`jobs`]: list, inspect, cancel jobs and stream their results; the job fields.
//! - [`modules`]: upload, download and delete WebAssembly task modules.
//! - [`tokens`]: the admin creates, lists and revokes submitter tokens.
//! - [`health`]: `/healthz` (alive) and `/readyz` (database reachable).
//! - [`json`]: the JSON extractor that turns every body error into the API's error format.
//! - [`events`]: a job's progress as server-sent events; [`chunks`]: its chunk map;
//!   [`image`]: a `mandelbrot` job's picture.
//! - [`volunteers`]: credit, the leaderboard and display names; [`dashboard`]: the dashboard's
//!   live feed (server-sent events).
//! - [`workers`]: the admin lifts a worker identity's blacklist; [`masters`]: the live masters
//!   workers may fail over to.
//! - [`openapi`]: the OpenAPI document of all of it.
//! - [`places`]: the caps on event streams and results downloads, held while they stream.

pub mod chunks;
pub mod dashboard;
pub mod events;
pub mod health;
pub mod image;
pub mod jobs;
pub mod json;
pub mod masters;
pub mod modules;
pub mod openapi;
pub mod places;
pub mod submit;
pub mod tokens;
pub mod volunteers;
pub mod workers;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::AppState;
use crate::error::Error;
use crate::limits::{Limits, VOLUNTEER_BODY_BYTES};

/// Routes under `/api/v1`.
///
/// Bodies: the master's router sets [`crate::limits::DEFAULT_BODY_BYTES`] (64 KiB) for every
/// route; job submission takes `max_body_bytes` as JSON and `max_dataset_bytes` (plus its
/// `job` part) as a multipart form with a dataset, `PUT /volunteers/me` 4 KiB, and module
/// uploads count their bytes themselves (`max_module_bytes`).
///
/// Time: every route answers within `request_timeout` (503 `timeout` otherwise) except the
/// streaming ones: results downloads, server-sent events and module uploads.
pub fn v1(limits: &Limits) -> Router<AppState> {
    let bounded = Router::new()
        .route(
            "/jobs",
            post(submit::submit.layer(DefaultBodyLimit::max(submit::body_limit(limits))))
                .get(jobs::list),
        )
        .route("/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/jobs/{id}/chunks", get(chunks::map))
        .route("/jobs/{id}/image.png", get(image::image))
        .route(
            "/modules/{id}",
            get(modules::download).delete(modules::delete),
        )
        .route("/tokens", post(tokens::create).get(tokens::list))
        .route("/tokens/{id}", delete(tokens::revoke).patch(tokens::update))
        .route("/workers/{id}/blacklist", delete(workers::lift_blacklist))
        .route("/masters", get(masters::list))
        .route("/volunteers", get(volunteers::list))
        .route(
            "/volunteers/me",
            get(volunteers::me)
                .put(volunteers::set_name.layer(DefaultBodyLimit::max(VOLUNTEER_BODY_BYTES))),
        )
        .route("/openapi.json", get(openapi::document));
    let bounded = with_timeout(bounded, limits.request_timeout);
    let streaming = Router::new()
        .route("/jobs/{id}/results", get(jobs::results))
        .route("/jobs/{id}/events", get(events::events))
        .route("/modules", post(modules::upload))
        .route("/dashboard/events", get(dashboard::events));
    bounded
        .merge(streaming)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Give every route of `router` so far the request timeout: 503 `timeout` (the API's JSON
/// error) when its handler takes longer than `limit` to produce a response. It bounds the time
/// to the response's head, so only routes whose handlers do all their work before answering
/// should get it (not streams).
pub fn with_timeout<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    limit: Duration,
) -> Router<S> {
    router.route_layer(from_fn_with_state(limit, request_timeout))
}

async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::Timeout(limit).into_response(),
    }
}

async fn not_found() -> Error {
    Error::NotFound("route")
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn slow_requests_answer_503_timeout_in_json() {
        async fn slow() -> &'static str {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }
        let app = super::with_timeout(
            Router::new().route("/slow", get(slow)),
            Duration::from_millis(50),
        );
        let response = app
            .oneshot(Request::get("/slow").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(response.status().as_u16(), 503);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"]["code"], "timeout");
    }
}
