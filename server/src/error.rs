//! The master's one error type, and how each variant answers over HTTP.
//!
//! Every REST error body is `{"error": {"code": "...", "message": "..."}}`. Internal errors
//! are logged with their detail and answered with a generic 500: SQL text, paths and the like
//! never reach a client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the body is not well-formed JSON (or not JSON at all).
    #[error("{0}")]
    MalformedJson(String),
    /// 400: a body that is not well-formed in another way than JSON (e.g. a broken multipart
    /// form), or could not be read.
    #[error("{0}")]
    MalformedBody(String),
    /// 401: no bearer token, or one the master does not know.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 401: a volunteer route without a worker identity in `X-Grid-Volunteer`.
    #[error("the X-Grid-Volunteer header must hold this volunteer's worker identity")]
    NoVolunteerIdentity,
    /// 403: the token is valid but not allowed to do this (e.g. non-admin creating tokens).
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404: no such resource, or it belongs to someone else.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405: the route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 409: the request conflicts with the resource's state (e.g. cancelling a finished job).
    #[error("{0}")]
    Conflict(String),
    /// 409 with a specific code: e.g. `module_in_use` (deleting a module an unfinished job
    /// runs).
    #[error("{message}")]
    ConflictWith {
        /// Stable code, e.g. `module_in_use`.
        code: &'static str,
        /// What is in the way, for a human.
        message: String,
    },
    /// 410: the resource existed but its content is gone for good (e.g. `results_expired`:
    /// the retention deleted a job's results).
    #[error("{message}")]
    Gone {
        /// Stable code, e.g. `results_expired`.
        code: &'static str,
        /// What was deleted and when, for a human.
        message: String,
    },
    /// 413: the body, or a part of it, is over a documented limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415: the body is not declared as `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid: unknown kernel, bad input, out-of-range field.
    #[error("{message}")]
    Invalid {
        /// Stable code, e.g. `unknown_kernel`, `invalid_input`, `invalid_field`.
        code: &'static str,
        /// What is wrong, for a human.
        message: String,
    },
    /// 429: the client holds as many of something as it may (e.g. worker sessions from one
    /// network).
    #[error("{message}")]
    TooMany {
        /// Stable code, e.g. `too_many_sessions`.
        code: &'static str,
        /// What is over which limit, for a human.
        message: String,
    },
    /// 429 `quota_exceeded` with `Retry-After`: the submitter token is over one of its quotas
    /// ([`crate::quota`]). 413 `quota_exceeded` (no `Retry-After`) when this request alone is
    /// over the whole limit, so waiting cannot help.
    #[error("{message}")]
    QuotaExceeded {
        /// Which quota: `max_open_chunks`, `max_module_bytes` or `max_submissions_per_minute`.
        quota: &'static str,
        /// Seconds until trying again may succeed; `None` when it never can (413).
        retry_after: Option<std::time::Duration>,
        /// The quota, its limit and the current use, for a human.
        message: String,
    },
    /// 503 with `Retry-After`: the master serves as many of something as it may right now
    /// (results downloads, event streams); trying again later may succeed.
    #[error("{message}")]
    Busy {
        /// Stable code, e.g. `too_many_downloads`.
        code: &'static str,
        /// Seconds a client should wait before trying again.
        retry_after_seconds: u32,
        /// What is at which limit, for a human.
        message: String,
    },
    /// 503: the request took longer than the request timeout; it may be retried.
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    /// 503: the database cannot be reached right now.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// 500: a bug or an unexpected database failure; the detail is logged, not returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// Shorthand for a 422 with the given code.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Error::MalformedBody(_) => (StatusCode::BAD_REQUEST, "malformed_body"),
            Error::Unauthorized | Error::NoVolunteerIdentity => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::ConflictWith { code, .. } => (StatusCode::CONFLICT, code),
            Error::Gone { code, .. } => (StatusCode::GONE, code),
            Error::QuotaExceeded {
                retry_after: Some(_),
                ..
            } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            Error::QuotaExceeded { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded"),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Error::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Error::TooMany { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            Error::Busy { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            Error::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        if crate::store::error::is_unavailable(&error) {
            Error::Unavailable(error)
        } else {
            Error::Internal(error.into())
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(error: anyhow::Error) -> Self {
        Error::Internal(error)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Error::Internal(source) => tracing::error!(error = ?source, "internal error"),
            Error::Unavailable(source) => tracing::warn!(error = %source, "database unavailable"),
            _ => {}
        }
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = (status, Json(body)).into_response();
        if let Error::QuotaExceeded { quota, .. } = &self {
            ::metrics::counter!("grid_quota_refusals_total", "quota" => *quota).increment(1);
        }
        if let Error::QuotaExceeded {
            retry_after: Some(wait),
            ..
        } = &self
        {
            // Whole seconds, rounded up: a client that waits this long finds room.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds.max(1)),
            );
        }
        if let Error::Busy {
            retry_after_seconds,
            ..
        } = &self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from((*retry_after_seconds).max(1)),
            );
        }
        response
    }
}
