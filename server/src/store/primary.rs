//! Finding the PostgreSQL primary among several hosts, and following it after a failover.
//!
//! A master is given one libpq-style URL that may name several hosts,
//! `postgres://grid@db1:5432,db2:5432/grid?target_session_attrs=read-write`. sqlx parses only
//! one host per URL, so [`PgHosts::parse`] splits it into one set of connect options per host.
//! The pool connects to the host found writable (`pg_is_in_recovery()` false); every new
//! connection checks it again, so a pool never hands out a connection to a standby. While the
//! master runs, [`follow_primary`] probes the pool every [`PROBE_INTERVAL`]; when the primary is
//! gone or read-only it asks every host in turn and points the pool's future connections at
//! the one that is now the primary (the promoted standby). Connections to the dead primary fail
//! their health check and are replaced through the new options.
//!
//! A master always writes, so whatever `target_session_attrs` says, it wants the primary.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// How often a master with several database hosts checks that it talks to the primary.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one host may take to connect and answer whether it is the primary.
const HOST_TIMEOUT: Duration = Duration::from_secs(2);

/// The database hosts of one URL, in the URL's order.
#[derive(Clone)]
pub struct PgHosts {
    /// One connect-options set per host (same user, password, database and parameters).
    pub options: Vec<PgConnectOptions>,
    /// `host:port` of each, for logs (never the password).
    pub names: Vec<String>,
}

impl std::fmt::Debug for PgHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgHosts")
            .field("hosts", &self.names)
            .finish_non_exhaustive()
    }
}

/// Why a database URL cannot be used (the text never contains a password).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not `postgres://` or `postgresql://`.
    #[error("the database URL must start with postgres:// or postgresql://")]
    Scheme,
    /// A host entry sqlx refused.
    #[error("host {host} of the database URL: {reason}")]
    Host {
        /// The host entry.
        host: String,
        /// sqlx's reason.
        reason: String,
    },
}

impl PgHosts {
    /// Split `url` into one connect-options set per host. A URL with one host gives one.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::Scheme)?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(UrlError::Scheme);
        }
        // The authority ends at the first '/' or '?' after the user information.
        let (userinfo, authority_and_rest) = match rest.rfind('@') {
            Some(at) if !rest[..at].contains('/') => (&rest[..=at], &rest[at + 1..]),
            _ => ("", rest),
        };
        let end = authority_and_rest
            .find(['/', '?'])
            .unwrap_or(authority_and_rest.len());
        let (hosts, tail) = authority_and_rest.split_at(end);
        let tail = without_parameter(tail, "target_session_attrs");
        let mut options = Vec::new();
        let mut names = Vec::new();
        for host in hosts.split(',') {
            let single = format!("{scheme}://{userinfo}{host}{tail}");
            let parsed = PgConnectOptions::from_str(&single).map_err(|error| UrlError::Host {
                host: host.to_owned(),
                reason: crate::config::redact_url(&error.to_string()),
            })?;
            names.push(format!("{}:{}", parsed.get_host(), parsed.get_port()));
            options.push(parsed);
        }
        Ok(PgHosts { options, names })
    }

    /// The first host that answers as the primary, asking them in order; `None` when none
    /// does (all down, or all standbys: a failover not yet promoted).
    pub async fn find_primary(&self) -> Option<usize> {
        for (index, options) in self.options.iter().enumerate() {
            match tokio::time::timeout(HOST_TIMEOUT, is_primary(options)).await {
                Ok(Ok(true)) => return Some(index),
                Ok(Ok(false)) => {
                    tracing::debug!(host = %self.names[index], "database host is a standby")
                }
                Ok(Err(error)) => {
                    tracing::debug!(host = %self.names[index], %error, "database host unreachable")
                }
                Err(_) => tracing::debug!(host = %self.names[index], "database host timed out"),
            }
        }
        None
    }
}

/// `tail` (the URL from the path on) without the query parameter `name`.
fn without_parameter(tail: &str, name: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name) && !pair.is_empty())
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Whether the server behind `options` accepts writes.
async fn is_primary(options: &PgConnectOptions) -> Result<bool, sqlx::Error> {
    let mut connection = PgConnection::connect_with(options).await?;
    let in_recovery = in_recovery(&mut connection).await;
    let _ = connection.close().await;
    Ok(!in_recovery?)
}

/// Whether this connection's server is a standby (replaying WAL, read-only).
pub async fn in_recovery(connection: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(connection)
        .await
}

/// Keep `pool` on the primary among `hosts` for as long as the master runs: probe it, and when
/// it is unreachable or read-only, find the new primary and connect there from now on.
pub async fn follow_primary(pool: PgPool, hosts: PgHosts, mut current: usize) {
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if pool.is_closed() {
            return;
        }
        let healthy = tokio::time::timeout(HOST_TIMEOUT, probe(&pool))
            .await
            .is_ok_and(|answer| answer.is_ok_and(|standby| !standby));
        if healthy {
            continue;
        }
        let Some(found) = hosts.find_primary().await else {
            tracing::warn!(hosts = ?hosts.names, "no database host is the primary; retrying");
            continue;
        };
        if found != current {
            tracing::warn!(
                from = %hosts.names[current],
                to = %hosts.names[found],
                "the database primary moved: following it"
            );
            metrics::counter!("grid_database_failovers_total").increment(1);
            pool.set_connect_options(hosts.options[found].clone());
            current = found;
        }
    }
}

/// One round trip on a pooled connection: whether its server is in recovery.
async fn probe(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    in_recovery(&mut connection).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_multi_host_url_gives_one_options_set_per_host() {
        let hosts = PgHosts::parse(
            "postgres://grid:s3cret@127.0.0.1:5433,127.0.0.1:5434/grid?target_session_attrs=read-write&sslmode=disable",
        )
        .unwrap();
        assert_eq!(hosts.names, ["127.0.0.1:5433", "127.0.0.1:5434"]);
        for options in &hosts.options {
            assert_eq!(options.get_username(), "grid");
            assert_eq!(options.get_database(), Some("grid"));
        }
        assert!(!format!("{hosts:?}").contains("s3cret"));
    }

    #[test]
    fn a_single_host_url_is_one_host() {
        let hosts = PgHosts::parse("postgresql://postgres@db/grid").unwrap();
        assert_eq!(hosts.names, ["db:5432"]);
        let hosts = PgHosts::parse("postgres://postgres@127.0.0.1:5432").unwrap();
        assert_eq!(hosts.options.len(), 1);
    }

    #[test]
    fn only_the_session_attribute_parameter_is_dropped() {
        assert_eq!(
            without_parameter(
                "/grid?target_session_attrs=any&application_name=m1",
                "target_session_attrs"
            ),
            "/grid?application_name=m1"
        );
        assert_eq!(
            without_parameter(
                "/grid?target_session_attrs=read-write",
                "target_session_attrs"
            ),
            "/grid"
        );
        assert_eq!(without_parameter("/grid", "target_session_attrs"), "/grid");
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(matches!(
            PgHosts::parse("mysql://root@db/grid"),
            Err(UrlError::Scheme)
        ));
        assert!(PgHosts::parse("postgres://db:notaport/grid").is_err());
    }
}
