//! `AppJson`: axum's `Json` extractor with the API's own error bodies (axum's rejections are
//! plain text), after the axum error-handling example.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use crate::error::Error;

/// A JSON request body whose rejections become [`Error`]s.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(AppJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonSyntaxError(error) => Error::MalformedJson(error.body_text()),
                JsonRejection::JsonDataError(error) => {
                    Error::invalid("invalid_field", error.body_text())
                }
                JsonRejection::MissingJsonContentType(error) => {
                    Error::UnsupportedMediaType(error.body_text())
                }
                JsonRejection::BytesRejection(error)
                    if error.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    Error::TooLarge(error.body_text())
                }
                other => Error::MalformedJson(other.body_text()),
            }),
        }
    }
}
