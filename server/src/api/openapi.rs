//! The OpenAPI 3.1 document of the master's HTTP interface, generated from the handlers'
//! `#[utoipa::path]` annotations and the types' `ToSchema` derives, served at
//! `GET /api/v1/openapi.json` (no token) and rendered by the page `/api.html`.
//!
//! Every route of [`crate::routes`] is in it, pages and the worker WebSocket included (those
//! are described by the annotated stubs at the end of this file); `server/tests/integration/openapi.rs`
//! fails when a route is missing.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    chunks, dashboard, events, health, image, jobs, masters, modules, submit, tokens, volunteers,
    workers,
};
use crate::dashboard::{ChunkTotals, Sample, WorkerCounts};
use crate::store::insights::JobProgress;
use crate::store::{ChunkCounts, JobView, ReplicaCounts, TokenView};

/// The document's source.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "grid",
        description = "The master of a browser-based WebAssembly volunteer compute grid: \
            submit jobs (a built-in kernel or an uploaded WebAssembly module, and a list of chunk inputs), follow their progress, read \
            their results. Every chunk is computed by several distinct volunteers and accepted \
            only when their outputs agree.\n\n\
            Authentication: `Authorization: Bearer TOKEN` on the job and token routes (the \
            admin token sees every job, a submitter token only its own); volunteers identify \
            themselves with `X-Grid-Volunteer: WORKER_ID`. Every error is \
            `{\"error\": {\"code\", \"message\"}}` with a stable code.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        submit::submit,
        jobs::list,
        jobs::show,
        jobs::cancel,
        jobs::results,
        events::events,
        chunks::map,
        image::image,
        modules::upload,
        modules::download,
        modules::delete,
        tokens::create,
        tokens::list,
        tokens::revoke,
        tokens::update,
        workers::lift_blacklist,
        masters::list,
        volunteers::list,
        volunteers::me,
        volunteers::set_name,
        dashboard::events,
        document,
        health::healthz,
        health::readyz,
        crate::metrics::scrape,
        crate::worker_socket,
        contribute_page,
        dashboard_page,
        page_asset,
    ),
    components(schemas(
        JobView, ChunkCounts, ReplicaCounts, JobProgress, ErrorBody, ErrorDetail, ResultLine,
        Sample, WorkerCounts, ChunkTotals, modules::UploadedModule,
        TokenView, tokens::NewToken, tokens::TokenChange,
        crate::store::ExportView, super::jobs::SinkSpec, masters::MasterList,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "jobs", description = "Submit, follow and read jobs (bearer token)"),
        (name = "modules", description = "WebAssembly task modules (upload: bearer token; download: none)"),
        (name = "tokens", description = "Submitter tokens (admin token)"),
        (name = "volunteers", description = "Credit and display names of volunteers"),
        (name = "dashboard", description = "Live figures of the grid"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "workers", description = "The worker protocol's WebSocket, and worker identities (admin token)"),
        (name = "pages", description = "The web pages and their assets"),
    )
)]
pub struct ApiDoc;

/// Adds the security schemes the paths refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token, or a submitter token from POST /api/v1/tokens",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "volunteer",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Grid-Volunteer",
                "The volunteer's worker identity (the worker_id of its hello)",
            ))),
        );
    }
}

/// Every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code: `malformed_json`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `conflict`, `too_large`, `unsupported_media_type`,
    /// `unknown_kernel`, `invalid_input`, `invalid_field`, `unavailable`, `internal`.
    #[schema(example = "not_found")]
    pub code: String,
    /// For a human.
    #[schema(example = "job not found")]
    pub message: String,
}

/// One line of `GET /api/v1/jobs/{id}/results` (NDJSON).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultLine {
    /// Chunk index.
    pub index: i64,
    /// The accepted output (absent when the chunk failed).
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// Distinct workers that returned it (absent when the chunk failed).
    pub agreeing: Option<i64>,
    /// Why the chunk failed (absent when it was accepted).
    pub error: Option<String>,
}

/// The document itself.
#[utoipa::path(
    get,
    operation_id = "openapi_document",
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn document() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response()
}

// The pages are served by `crate::web`; these stubs only describe them.

/// The contribute page: lend this browser's spare power.
#[utoipa::path(
    get,
    operation_id = "contribute_page",
    path = "/",
    tag = "pages",
    responses(
        (status = 200, description = "The contribute page", content_type = "text/html"),
        (status = 503, description = "This master was built without its web pages", content_type = "text/html"),
    )
)]
#[allow(dead_code)]
fn contribute_page() {}

/// The dashboard: results per second, workers, jobs, chunk maps, leaderboard.
#[utoipa::path(
    get,
    operation_id = "dashboard_page",
    path = "/dashboard",
    tag = "pages",
    responses((status = 200, description = "The dashboard", content_type = "text/html"))
)]
#[allow(dead_code)]
fn dashboard_page() {}

/// Pages (`job.html`, `api.html`, `bench.html`, ...) and their content-hashed assets.
#[utoipa::path(
    get,
    operation_id = "page_or_asset",
    path = "/{file}",
    tag = "pages",
    params(("file" = String, Path, description = "File name, e.g. `job.html`")),
    responses(
        (status = 200, description = "The file; hashed assets are cached as immutable"),
        (status = 304, description = "Not modified (ETag)"),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
#[allow(dead_code)]
fn page_asset() {}

/// `GET /api/v1/jobs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// Newest first, at most 1000.
    pub jobs: Vec<JobView>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenCreated {
    /// The token's id.
    pub id: i64,
    /// The token (`grid_` and 64 hex digits); only its SHA-256 is stored.
    pub token: String,
    /// The label given, if any.
    pub label: Option<String>,
}

/// `GET /api/v1/tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    /// Every submitter token, oldest first.
    pub tokens: Vec<TokenView>,
}

/// `DELETE /api/v1/tokens/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenRevoked {
    /// The token's id.
    pub id: i64,
    /// Always true.
    pub revoked: bool,
}

/// `/healthz` and `/readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// `ok` (alive) or `ready` (the database answers).
    pub status: String,
}
