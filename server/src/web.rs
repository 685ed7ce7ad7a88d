//! The contribute page: the pages and assets of `frontend/dist/`, and who may open worker
//! sessions from a browser.
//!
//! - [`routes`]: `/` (the contribute page), `/dashboard`, and `/{file}` (other pages, assets),
//!   embedded in the binary at build time with `rust-embed` (release builds; debug builds read
//!   the folder at run time). `cargo xtask` writes `frontend/dist/` (xtask/src/web.rs) before building the
//!   master; a master built without it still runs, and `/` explains how to build the page.
//!   (Cargo tracks the embedded files, not the folder: a release build made while the folder
//!   was missing is not rebuilt when it appears; build the page first.)
//! - [`OriginPolicy`]: the `Origin` check of the WebSocket endpoint `/ws`.
//!
//! Caching: assets are named by content hash (`app.<16 hex>.js`) and cached for a year as
//! immutable; pages keep their names and are revalidated on every load (`no-cache` + ETag).
//! Every response here carries [`CONTENT_SECURITY_POLICY`]: scripts and styles only from this
//! origin (no inline script), `'wasm-unsafe-eval'` to compile the WebAssembly worker.

use std::borrow::Cow;

use axum::Router;
use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY as CSP, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH, ORIGIN,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

use crate::error::Error;

/// The policy of every page and asset. Workers and WebSockets stay on this origin
/// (`'self'` covers `ws:`/`wss:` to it); nothing may frame the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; \
     script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; worker-src 'self'; \
     style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `Cache-Control` of content-hashed assets.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of pages and other unhashed files: always revalidate.
const REVALIDATE: &str = "no-cache";

/// `frontend/dist/`, as `cargo xtask` builds it.
#[derive(RustEmbed)]
#[folder = "../frontend/dist/"]
#[allow_missing = true]
struct Dist;

/// One file to serve.
#[derive(Debug, Clone)]
pub struct Asset {
    /// The content.
    pub bytes: Cow<'static, [u8]>,
    /// SHA-256 of the content (the ETag).
    pub sha256: [u8; 32],
}

/// The routes of the contribute page, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard", get(dashboard))
        .route("/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers, embedded)
}

async fn dashboard(headers: HeaderMap) -> Response {
    serve("dashboard.html", &headers, embedded)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers, embedded)
}

fn embedded(name: &str) -> Option<Asset> {
    Dist::get(name).map(|file| Asset {
        sha256: file.metadata.sha256_hash(),
        bytes: file.data,
    })
}

/// The response for `name` from the files `lookup` knows.
pub fn serve(name: &str, headers: &HeaderMap, lookup: impl Fn(&str) -> Option<Asset>) -> Response {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let asset = if valid { lookup(name) } else { None };
    let Some(asset) = asset else {
        if name == "index.html" {
            return not_built();
        }
        return Error::NotFound("file").into_response();
    };

    let etag = format!("\"{}\"", hex::encode(&asset.sha256[..16]));
    let mut response = if headers
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        }) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = asset.bytes.into_owned().into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
        response
    };
    let cache = if is_content_hashed(name) {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, value);
    }
    secure(headers);
    response
}

/// `/` of a master built without the page: say how to build it.
fn not_built() -> Response {
    let body = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
        <title>Contribute page not built</title></head><body>\
        <h1>The contribute page is not built into this master</h1>\
        <p>This grid-server was compiled without the browser worker's assets \
        (<code>frontend/dist/</code>). Build them, then the server: \
        <code>cargo xtask run</code> does both (or <code>cargo xtask test</code>).</p>\
        <p>The REST API (<code>/api/v1</code>) and native workers (<code>/ws</code>) \
        work regardless.</p></body></html>\n";
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure(headers);
    response
}

/// Headers every page and asset carries.
fn secure(headers: &mut HeaderMap) {
    headers.insert(CSP, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // For browsers older than CSP's `frame-ancestors`.
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        // `WebAssembly.instantiateStreaming` insists on exactly this type.
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `name.<16 lowercase hex>.ext`, as xtask names hashed assets.
fn is_content_hashed(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    let (Some(_ext), Some(hash), Some(stem)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !stem.is_empty()
        && hash.len() == 16
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Which web origins may open worker sessions at `/ws`.
///
/// Allowed: requests without an `Origin` header (native workers and other non-browser
/// clients, which no web page can impersonate), the master's own origin, and the configured
/// `--allowed-origins`. `*` allows every origin (for a page hosted elsewhere that anyone may
/// embed; think twice).
///
/// The master's own origin is `--public-origin` when given (M8): only those origins, whatever
/// the request's `Host` says. Without it, the default is the origin whose host and port equal
/// the request's `Host`, which DNS rebinding defeats (the attacker's name resolves to the
/// master, so `Origin: http://evil.example` arrives with `Host: evil.example`); set
/// `--public-origin` on any master a browser can reach, above all one bound to loopback or an
/// intranet.
///
/// A browser always sends `Origin` on a WebSocket handshake, so this stops other web sites
/// from making their visitors' browsers work for this master (or poisoning its quorum)
/// without the host's consent.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Configured origins, normalised (`scheme://host[:port]`, lowercase, no default port).
    allowed: Vec<String>,
    /// The master's public origins, normalised; empty: the request's `Host` decides.
    public: Vec<String>,
    /// `*` was configured.
    any: bool,
}

impl OriginPolicy {
    /// A policy allowing `allowed` besides the master's own origin (entries that are not
    /// `scheme://host[:port]` are ignored, with a warning).
    pub fn new(allowed: &[String]) -> Self {
        OriginPolicy::with_public(allowed, &[])
    }

    /// A policy allowing `allowed` and the master's `public` origins (none: the origin of the
    /// request's `Host`); malformed entries are ignored with a warning.
    pub fn with_public(allowed: &[String], public: &[String]) -> Self {
        let mut policy = OriginPolicy::default();
        for entry in public.iter().map(|entry| entry.trim()) {
            if entry.is_empty() {
                continue;
            }
            match normalise_origin(entry) {
                Some(origin) => policy.public.push(origin),
                None => tracing::warn!(origin = entry, "ignoring a malformed public origin"),
            }
        }
        for entry in allowed {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                policy.any = true;
            } else if let Some(origin) = normalise_origin(entry) {
                policy.allowed.push(origin);
            } else {
                tracing::warn!(origin = entry, "ignoring a malformed allowed origin");
            }
        }
        policy
    }

    /// Whether a handshake with these headers (and request URI, for HTTP/2's authority) may
    /// open a worker session.
    pub fn allows(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let Some(origin) = headers.get(ORIGIN) else {
            return true;
        };
        if self.any {
            return true;
        }
        let Some(origin) = origin.to_str().ok().and_then(normalise_origin) else {
            return false;
        };
        if self.allowed.contains(&origin) {
            return true;
        }
        if !self.public.is_empty() {
            return self.public.contains(&origin);
        }
        let host = headers
            .get(HOST)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.authority().map(|authority| authority.to_string()));
        let Some(host) = host else {
            return false;
        };
        // The origin's authority against the Host, both without their scheme's default port.
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        strip_default_port(scheme, &host.to_ascii_lowercase()) == authority
    }
}

/// `scheme://host[:port]` lowercased, without a trailing slash or the scheme's default port;
/// `None` for anything else (paths, `null`, other schemes).
fn normalise_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https")
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
    {
        return None;
    }
    Some(format!(
        "{scheme}://{}",
        strip_default_port(scheme, authority)
    ))
}

fn strip_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "https" => ":443",
        _ => ":80",
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// The pages stop following a job in the states the master calls finished: one list,
    /// written in `sse.js` and checked against [`grid_protocol::states::JobState::FINISHED`].
    #[test]
    fn the_pages_finished_job_states_are_the_masters() {
        let shared = include_str!("../../frontend/src/sse.js");
        let names: Vec<String> = grid_protocol::states::JobState::FINISHED
            .iter()
            .map(|state| format!("'{state}'"))
            .collect();
        let line = format!("export const FINISHED_JOB_STATES = [{}];", names.join(", "));
        assert!(
            shared.contains(&line),
            "frontend/src/sse.js must say `{line}`"
        );
        for page in [
            include_str!("../../frontend/src/job.js"),
            include_str!("../../frontend/src/dashboard.js"),
        ] {
            assert!(page.contains("FINISHED_JOB_STATES as FINISHED"));
            assert!(
                !page.contains("'cancelled'"),
                "a page lists job states of its own"
            );
        }
    }

    fn asset(bytes: &'static [u8]) -> Asset {
        use sha2::Digest;
        Asset {
            bytes: Cow::Borrowed(bytes),
            sha256: sha2::Sha256::digest(bytes).into(),
        }
    }

    fn fake(name: &str) -> Option<Asset> {
        match name {
            "index.html" => Some(asset(b"<!doctype html><p>hi</p>")),
            "app.0123456789abcdef.js" => Some(asset(b"console.log(1)")),
            "grid_worker_wasm_bg.fedcba9876543210.wasm" => Some(asset(b"\0asm\x01\0\0\0")),
            "style.0123456789abcdef.css" => Some(asset(b"body{}")),
            "bench-inputs.json" => Some(asset(b"[]")),
            _ => None,
        }
    }

    fn header<'a>(response: &'a Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[test]
    fn assets_get_their_type_and_caching() {
        let none = HeaderMap::new();
        let cases = [
            ("index.html", "text/html; charset=utf-8", REVALIDATE),
            (
                "app.0123456789abcdef.js",
                "text/javascript; charset=utf-8",
                IMMUTABLE,
            ),
            (
                "grid_worker_wasm_bg.fedcba9876543210.wasm",
                "application/wasm",
                IMMUTABLE,
            ),
            (
                "style.0123456789abcdef.css",
                "text/css; charset=utf-8",
                IMMUTABLE,
            ),
            ("bench-inputs.json", "application/json", REVALIDATE),
        ];
        for (name, content_type, cache) in cases {
            let response = serve(name, &none, fake);
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(header(&response, "content-type"), content_type, "{name}");
            assert_eq!(header(&response, "cache-control"), cache, "{name}");
            assert_eq!(
                header(&response, "content-security-policy"),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            assert!(header(&response, "etag").starts_with('"'), "{name}");
        }
    }

    #[test]
    fn etags_revalidate() {
        let first = serve("index.html", &HeaderMap::new(), fake);
        let etag = first.headers()["etag"].clone();
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, etag);
        let again = serve("index.html", &headers, fake);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&again, "cache-control"), REVALIDATE);
    }

    #[test]
    fn unknown_and_odd_names_are_404() {
        for name in [
            "nope.js",
            ".env",
            "..",
            "a/b.js",
            "app.js%00",
            "",
            "index.html\n",
        ] {
            let response = serve(name, &HeaderMap::new(), fake);
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{name:?}");
        }
    }

    #[test]
    fn a_master_without_the_page_says_how_to_build_it() {
        let response = serve("index.html", &HeaderMap::new(), |_| None);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            header(&response, "content-type"),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            header(&response, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
    }

    #[test]
    fn hashed_names_are_recognised() {
        assert!(is_content_hashed("app.0123456789abcdef.js"));
        assert!(is_content_hashed(
            "grid_worker_wasm_bg.0123456789abcdef.wasm"
        ));
        assert!(!is_content_hashed("app.js"));
        assert!(!is_content_hashed("index.html"));
        assert!(!is_content_hashed(".0123456789abcdef.js"));
        assert!(!is_content_hashed("app.0123456789ABCDEF.js"));
        assert!(!is_content_hashed("app.0123456789abcde.js"));
    }

    #[tokio::test]
    async fn routes_serve_through_the_router() {
        // Whatever `frontend/dist` holds (or not), `/` answers with a page and the CSP, and
        // unknown files are the API's JSON 404.
        let app = routes::<()>();
        let response = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(
            matches!(
                response.status(),
                StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{}",
            response.status()
        );
        assert_eq!(
            header(&response, "content-type"),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            header(&response, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        let response = app
            .oneshot(
                Request::get("/no-such-file.js")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }

    fn handshake(origin: Option<&str>, host: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        if let Some(host) = host {
            headers.insert(HOST, HeaderValue::from_str(host).unwrap());
        }
        headers
    }

    #[test]
    fn origins_default_to_the_masters_own() {
        let policy = OriginPolicy::default();
        let uri = Uri::from_static("/ws");
        let allowed = [
            (None, Some("127.0.0.1:8080")),
            (None, None),
            (Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")),
            (Some("HTTP://Grid.Example:8080"), Some("grid.example:8080")),
            (Some("https://grid.example"), Some("grid.example")),
            (Some("https://grid.example"), Some("grid.example:443")),
            (Some("http://grid.example"), Some("grid.example:80")),
            (Some("http://[::1]:8080"), Some("[::1]:8080")),
        ];
        for (origin, host) in allowed {
            assert!(
                policy.allows(&handshake(origin, host), &uri),
                "{origin:?} {host:?}"
            );
        }
        let refused = [
            (Some("http://evil.example"), Some("127.0.0.1:8080")),
            (Some("http://127.0.0.1:8081"), Some("127.0.0.1:8080")),
            (Some("http://127.0.0.1"), Some("127.0.0.1:8080")),
            (Some("https://grid.example"), Some("grid.example:80")),
            (Some("null"), Some("127.0.0.1:8080")),
            (Some("file://"), Some("127.0.0.1:8080")),
            (Some("http://127.0.0.1:8080/path"), Some("127.0.0.1:8080")),
            (Some("http://127.0.0.1:8080"), None),
        ];
        for (origin, host) in refused {
            assert!(
                !policy.allows(&handshake(origin, host), &uri),
                "{origin:?} {host:?}"
            );
        }
        // HTTP/2 has no Host header: the authority of the request URI stands in.
        let uri = Uri::from_static("https://grid.example/ws");
        assert!(policy.allows(&handshake(Some("https://grid.example"), None), &uri));
    }

    #[test]
    fn configured_origins_are_allowed_too() {
        let policy = OriginPolicy::new(&[
            "https://Volunteer.Example/".into(),
            "http://lab.example:8000".into(),
            "not an origin".into(),
            String::new(),
        ]);
        let uri = Uri::from_static("/ws");
        let host = Some("grid.example:8080");
        for origin in [
            "https://volunteer.example",
            "https://volunteer.example:443",
            "http://lab.example:8000",
            "http://grid.example:8080",
        ] {
            assert!(
                policy.allows(&handshake(Some(origin), host), &uri),
                "{origin}"
            );
        }
        for origin in [
            "http://volunteer.example",
            "http://lab.example",
            "not an origin",
        ] {
            assert!(
                !policy.allows(&handshake(Some(origin), host), &uri),
                "{origin}"
            );
        }
        let any = OriginPolicy::new(&["*".into()]);
        assert!(any.allows(&handshake(Some("http://anything.example"), host), &uri));
        assert!(any.allows(&handshake(Some("null"), host), &uri));
    }

    #[test]
    fn public_origins_ignore_the_host() {
        let policy = OriginPolicy::with_public(
            &["http://lab.example:8000".into()],
            &["https://Grid.Example".into(), "nonsense".into()],
        );
        let uri = Uri::from_static("/ws");
        // DNS rebinding: the attacker's name resolves to the master, Host and Origin agree.
        assert!(!policy.allows(
            &handshake(Some("http://evil.example"), Some("evil.example")),
            &uri
        ));
        assert!(!policy.allows(
            &handshake(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")),
            &uri
        ));
        for origin in [
            "https://grid.example",
            "https://grid.example:443",
            "http://lab.example:8000",
        ] {
            assert!(
                policy.allows(&handshake(Some(origin), Some("127.0.0.1:8080")), &uri),
                "{origin}"
            );
        }
        assert!(policy.allows(&handshake(None, Some("evil.example")), &uri));
        // Unset: the Host decides, so the rebinding passes (the documented default).
        assert!(OriginPolicy::default().allows(
            &handshake(Some("http://evil.example"), Some("evil.example")),
            &uri
        ));
    }
}
