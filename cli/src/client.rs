//! [`Client`]: the grid master's REST API over HTTP, with its errors turned into [`Error`]s.
//!
//! Every request carries the bearer token. A non-success answer becomes [`Error::Api`] when it
//! has the API's `{"error": {"code", "message"}}` body and [`Error::Http`] otherwise; a request
//! that got no answer at all becomes [`Error::Connect`] naming the URL.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// How long connecting to the master may take. There is no overall request timeout: results
/// downloads and large submissions take as long as they take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one master, authenticated with one token.
#[derive(Clone)]
pub struct Client {
    /// The master's base URL, without a trailing slash.
    base: String,
    /// The bearer token (kept out of `Debug`).
    token: String,
    /// The HTTP client (connection pool).
    http: reqwest::Client,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The API's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

impl Client {
    /// A client for the master at `url` (`http://` or `https://`). Fails without a token, or
    /// with an unusable URL; contacts nothing.
    pub fn new(url: &str, token: Option<&str>) -> Result<Client> {
        Client::trusting(url, token, None)
    }

    /// [`Client::new`], also trusting the certificate authorities of the PEM file `ca_cert`
    /// for an `https://` master (a private CA, or its self-signed certificate; `--ca-cert`).
    pub fn trusting(url: &str, token: Option<&str>, ca_cert: Option<&Path>) -> Result<Client> {
        let parsed = Url::parse(url)
            .map_err(|error| Error::Usage(format!("invalid --url / GRID_URL `{url}`: {error}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            return Err(Error::Usage(format!(
                "invalid --url / GRID_URL `{url}`: expected http://HOST:PORT or https://HOST"
            )));
        }
        let token = match token.map(str::trim) {
            Some(token) if !token.is_empty() => token.to_owned(),
            _ => return Err(Error::MissingToken),
        };
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("grid-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|source| Error::File {
                path: path.to_owned(),
                source,
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| Error::Usage(format!("--ca-cert {}: {error}", path.display())))?;
            if certificates.is_empty() {
                return Err(Error::Usage(format!(
                    "--ca-cert {}: no certificate in the file",
                    path.display()
                )));
            }
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http
            .build()
            .map_err(|error| Error::Usage(format!("cannot set up the HTTP client: {error}")))?;
        Ok(Client {
            base: url.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// The full URL of an API path such as `/api/v1/jobs`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with the token set; send it with [`Client::send`].
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Send a request and return the answer if it is a success.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let request = request
            .build()
            .map_err(|error| Error::Usage(chain(&error)))?;
        let url = request.url().to_string();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|error| Error::Connect {
                url: url.clone(),
                detail: root_causes(&error),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // An error body is small; if it cannot be read, the status alone has to do.
        let body = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => Error::Api {
                status: status.as_u16(),
                code: error.code,
                message: error.message,
            },
            Err(_) => Error::Http { url, status },
        })
    }

    /// Send a request and decode its JSON answer.
    pub async fn send_json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        let body = response.bytes().await.map_err(|error| Error::Response {
            url: url.clone(),
            detail: chain(&error),
        })?;
        serde_json::from_slice(&body).map_err(|error| Error::Response {
            url,
            detail: error.to_string(),
        })
    }

    /// `GET path`, decoded.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send_json(self.request(Method::GET, path)).await
    }
}

/// The last two causes of a failed request, e.g. `tcp connect error: Connection refused`: the
/// outer layers only say "error sending request" and "client error (Connect)".
fn root_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let causes = causes(error);
    causes[causes.len().saturating_sub(2)..].join(": ")
}

/// An error and its causes, outermost first, joined by `: `.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    causes(error).join(": ")
}

/// An error's message and its sources', outermost first, without reqwest's "for url (...)"
/// (the URL is reported separately) and without repeats.
fn causes(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut causes: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        let text = match text.find(" for url (") {
            Some(at) => text[..at].to_owned(),
            None => text,
        };
        if !causes.contains(&text) {
            causes.push(text);
        }
        current = error.source();
    }
    causes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_url_and_the_token_are_checked_before_anything_is_sent() {
        assert!(matches!(
            Client::new("http://127.0.0.1:8080", None),
            Err(Error::MissingToken)
        ));
        assert!(matches!(
            Client::new("http://127.0.0.1:8080", Some("  ")),
            Err(Error::MissingToken)
        ));
        for url in ["127.0.0.1:8080", "ws://127.0.0.1:8080/ws", "not a url"] {
            assert!(
                matches!(Client::new(url, Some("t")), Err(Error::Usage(_))),
                "{url}"
            );
        }
        let client = Client::new("http://127.0.0.1:8080/", Some("secret")).unwrap();
        assert_eq!(
            client.url("/api/v1/jobs"),
            "http://127.0.0.1:8080/api/v1/jobs"
        );
        assert!(!format!("{client:?}").contains("secret"));
    }
}
