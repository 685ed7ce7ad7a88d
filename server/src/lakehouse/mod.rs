//! Results into the lakehouse: a job that names a Delta Lake table
//! (`"sink": {"delta": "s3://lake/grid/results"}`) has its verified results appended to that
//! table, in one commit, when it finishes.
//!
//! - [`SinkPolicy`] (this file): which table URIs a job may name (the master's `--sink-root`s)
//!   and how the master reaches S3-compatible storage (`--s3-endpoint`, `--s3-region`,
//!   `--s3-allow-http`, and the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` of its
//!   environment). A job brings a URI, never an endpoint or a credential.
//! - [`delta`]: one job's results into one Delta table, in one commit, exactly once.
//! - [`exporter`]: the task that claims the exports of finished jobs and runs them, with
//!   retries.

pub mod delta;
pub mod exporter;

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use url::Url;

use crate::error::{Error, Result};

/// Longest sink URI a job may name.
pub const MAX_SINK_URI_BYTES: usize = 1024;

/// How the master reaches S3-compatible object storage (from its own configuration only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// The endpoint, for storage other than AWS itself (`http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// The region (default: `AWS_REGION` of the environment, else `us-east-1`).
    pub region: Option<String>,
    /// Allow plain HTTP to the endpoint.
    pub allow_http: bool,
    /// The access key id (default: the environment's `AWS_ACCESS_KEY_ID`, or its other
    /// standard sources of credentials).
    pub access_key_id: Option<String>,
    /// The secret access key (never logged).
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Which Delta tables jobs may write, and how to reach them.
#[derive(Debug, Clone, Default)]
pub struct SinkPolicy {
    roots: Vec<Url>,
    s3: S3Settings,
}

impl SinkPolicy {
    /// A policy admitting tables under `roots` (each `file:///dir`, a plain absolute directory,
    /// or `s3://bucket[/prefix]`). No roots: jobs may name no sink.
    pub fn new(roots: &[String], s3: S3Settings) -> std::result::Result<SinkPolicy, String> {
        let roots = roots
            .iter()
            .map(|root| parse_root(root))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(SinkPolicy { roots, s3 })
    }

    /// Whether any sink is admitted.
    pub fn is_enabled(&self) -> bool {
        !self.roots.is_empty()
    }

    /// The canonical form of a job's sink URI, or 422 `invalid_sink` / `sink_not_allowed`.
    pub fn admit(&self, raw: &str) -> Result<String> {
        let invalid = |why: String| Error::invalid("invalid_sink", why);
        if raw.len() > MAX_SINK_URI_BYTES {
            return Err(invalid(format!(
                "sink.delta may be at most {MAX_SINK_URI_BYTES} bytes"
            )));
        }
        let url = Url::parse(raw)
            .map_err(|error| invalid(format!("sink.delta `{raw}` is not a URI: {error}")))?;
        check_shape(&url).map_err(|why| invalid(format!("sink.delta `{raw}`: {why}")))?;
        let url = without_trailing_slash(url);
        if self.roots.iter().any(|root| is_under(&url, root)) {
            Ok(url.to_string())
        } else if self.roots.is_empty() {
            Err(Error::invalid(
                "sink_not_allowed",
                "this master writes no Delta tables (it was started without --sink-root)",
            ))
        } else {
            Err(Error::invalid(
                "sink_not_allowed",
                format!(
                    "sink.delta `{url}` is not under a sink root of this master ({})",
                    self.roots
                        .iter()
                        .map(Url::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }

    /// The object store behind an `s3://` table: the bucket of `url`, reached with the
    /// master's settings. `None` for other schemes (delta-rs opens `file://` itself).
    pub(crate) fn s3_store(&self, url: &Url) -> anyhow::Result<Option<Arc<dyn ObjectStore>>> {
        if url.scheme() != "s3" {
            return Ok(None);
        }
        let bucket = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("{url} names no bucket"))?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(self.s3.allow_http);
        if let Some(endpoint) = &self.s3.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key) = &self.s3.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &self.s3.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        match &self.s3.region {
            Some(region) => builder = builder.with_region(region),
            None if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none() =>
            {
                builder = builder.with_region("us-east-1");
            }
            None => {}
        }
        Ok(Some(Arc::new(builder.build()?)))
    }
}

/// A `--sink-root`: a URI of an accepted scheme, or an absolute directory.
fn parse_root(root: &str) -> std::result::Result<Url, String> {
    let url = if root.starts_with('/') {
        Url::from_directory_path(root).map_err(|()| format!("--sink-root {root}: not a path"))?
    } else {
        Url::parse(root).map_err(|error| format!("--sink-root {root}: {error}"))?
    };
    check_shape(&url).map_err(|why| format!("--sink-root {root}: {why}"))?;
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| format!("--sink-root {root}: not a local path"))?;
        std::fs::create_dir_all(&path)
            .map_err(|error| format!("--sink-root {root}: cannot create {path:?}: {error}"))?;
    }
    Ok(without_trailing_slash(url))
}

/// The shapes of table URIs the master writes: `file:///abs/path` or `s3://bucket/path`,
/// without credentials, query, fragment, `.`/`..` segments or escapes (so that a path under a
/// root cannot leave it).
fn check_shape(url: &Url) -> std::result::Result<(), String> {
    match url.scheme() {
        "file" if url.host_str().is_none_or(str::is_empty) => {}
        "file" => return Err("file URIs name no host (file:///path)".into()),
        "s3" if url.host_str().is_some_and(|bucket| !bucket.is_empty()) => {}
        "s3" => return Err("s3 URIs name their bucket (s3://bucket/path)".into()),
        other => return Err(format!("the scheme is file or s3, not {other}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials come from the master's configuration, not the URI".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("no query or fragment".into());
    }
    if url.path().contains('%') || url.path().contains('\\') {
        return Err("no escapes or backslashes in the path".into());
    }
    if url
        .path()
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err("no `.` or `..` segments".into());
    }
    Ok(())
}

fn without_trailing_slash(mut url: Url) -> Url {
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(if path.is_empty() { "/" } else { &path });
    url
}

/// Whether `url` is `root` or lies below it (whole segments only).
fn is_under(url: &Url, root: &Url) -> bool {
    if url.scheme() != root.scheme() || url.host_str() != root.host_str() {
        return false;
    }
    let root_path = root.path().trim_end_matches('/');
    let path = url.path();
    path == root_path || path.starts_with(&format!("{root_path}/")) || root_path.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(roots: &[&str]) -> SinkPolicy {
        let roots: Vec<String> = roots.iter().map(|root| (*root).to_owned()).collect();
        SinkPolicy::new(&roots, S3Settings::default()).expect("roots")
    }

    fn code(result: Result<String>) -> &'static str {
        match result {
            Err(Error::Invalid { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn only_tables_under_a_root_are_admitted() {
        let root = std::env::temp_dir().join(format!("grid-sink-root-{}", std::process::id()));
        let root = root.to_str().expect("utf-8").to_owned();
        let policy = policy(&[&root, "s3://lake/grid"]);
        assert_eq!(
            policy
                .admit(&format!("file://{root}/results/"))
                .expect("admitted"),
            format!("file://{root}/results")
        );
        assert_eq!(
            policy.admit("s3://lake/grid/a/b").expect("admitted"),
            "s3://lake/grid/a/b"
        );
        assert_eq!(
            policy.admit("s3://lake/grid").expect("the root"),
            "s3://lake/grid"
        );
        for refused in [
            "s3://lake/gridiron/x".to_owned(),
            "s3://other/grid/x".to_owned(),
            "file:///etc/grid".to_owned(),
            format!("file://{root}-other/x"),
        ] {
            assert_eq!(
                code(policy.admit(&refused)),
                "sink_not_allowed",
                "{refused}"
            );
        }
        // The URL parser resolves `..` itself; what is left is outside the root.
        assert!(policy.admit(&format!("file://{root}/../etc")).is_err());
        assert!(policy.admit("s3://lake/grid/../other").is_err());
        assert!(policy.admit(&format!("file://{root}/%2e%2e/etc")).is_err());
        for invalid in [
            format!("file://{root}/a%41b"),
            "s3://key:secret@lake/grid/x".to_owned(),
            "s3://lake/grid/x?endpoint=http://evil".to_owned(),
            "http://lake/grid".to_owned(),
            "not a uri".to_owned(),
            format!("s3://lake/grid/{}", "x".repeat(MAX_SINK_URI_BYTES)),
            "s3://lake/grid/a\u{0}b".to_owned(),
            format!("file://{root}/a\u{0}b\u{1b}[2J"),
        ] {
            assert_eq!(code(policy.admit(&invalid)), "invalid_sink", "{invalid}");
        }
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn a_master_without_roots_admits_no_sink() {
        let policy = policy(&[]);
        assert!(!policy.is_enabled());
        assert_eq!(code(policy.admit("s3://lake/x")), "sink_not_allowed");
    }
}
