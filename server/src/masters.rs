//! The other live masters sharing this master's database, named to workers so that a worker
//! (or a script) given one master's URL can fail over to the others without configuration.
//!
//! Each master advertises the WebSocket URL it is reached at (`--advertise-url`, or one
//! derived from `--public-origin` or the listening address: [`advertised_url`]) in its
//! `masters` row; [`spawn`] refreshes this master's view of the others every
//! [`REFRESH_INTERVAL`] from the rows whose heartbeat is fresh. The view is what the welcome
//! carries and what `GET /api/v1/masters` answers, so a reconnect storm of many thousand
//! workers costs no query. When this master begins a graceful drain it withdraws its URL
//! ([`MasterDirectory::withdraw`]) before it closes its sessions, so the workers it sends away
//! are not sent back to it by the others.
//!
//! On the embedded database there are no others: the directory names this master alone.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;

/// How often the view of the other masters is refreshed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// Most other masters named to a worker.
pub const MAX_NAMED: usize = 16;

/// This master's advertised URL and its latest view of the others'.
#[derive(Debug)]
pub struct MasterDirectory {
    own: Option<String>,
    others: RwLock<Vec<String>>,
}

impl MasterDirectory {
    /// A directory that advertises `own` (none: this master is not named to anyone).
    pub fn new(own: Option<String>) -> Arc<MasterDirectory> {
        Arc::new(MasterDirectory {
            own,
            others: RwLock::new(Vec::new()),
        })
    }

    /// This master's own WebSocket URL, when it advertises one.
    pub fn own(&self) -> Option<&str> {
        self.own.as_deref()
    }

    /// The other live masters' WebSocket URLs, oldest master first.
    pub fn others(&self) -> Vec<String> {
        self.others
            .read()
            .map(|others| others.clone())
            .unwrap_or_default()
    }

    fn set_others(&self, live: Vec<(String, String)>, master_id: &str) {
        let mut named: Vec<String> = Vec::new();
        for (id, url) in live {
            if id == master_id || Some(url.as_str()) == self.own() || named.contains(&url) {
                continue;
            }
            named.push(url);
            if named.len() == MAX_NAMED {
                break;
            }
        }
        if let Ok(mut others) = self.others.write() {
            *others = named;
        }
    }

    /// Stop advertising this master (it is draining): the others stop naming it.
    pub async fn withdraw(&self, store: &dyn Store, master_id: &str) {
        if self.own.is_some()
            && let Err(error) = store.advertise_master(master_id, None).await
        {
            tracing::warn!(%error, "could not withdraw this master's URL");
        }
    }
}

/// The WebSocket URL this master advertises: `explicit` (`--advertise-url`) when given, else
/// the first public origin's, else the listening address's unless it is a wildcard (a master
/// on `0.0.0.0` does not know which of its addresses the others can reach).
pub fn advertised_url(
    explicit: Option<&str>,
    public_origins: &[String],
    bound: SocketAddr,
    tls: bool,
) -> Result<Option<String>, String> {
    if let Some(explicit) = explicit {
        let url = url::Url::parse(explicit)
            .map_err(|error| format!("--advertise-url {explicit}: {error}"))?;
        if !matches!(url.scheme(), "ws" | "wss") || url.host().is_none() {
            return Err(format!(
                "--advertise-url {explicit}: a ws:// or wss:// URL with a host, e.g. wss://grid-a.example/ws"
            ));
        }
        return Ok(Some(url.to_string()));
    }
    if let Some(origin) = public_origins.first() {
        let origin = origin.trim_end_matches('/');
        let ws = if let Some(rest) = origin.strip_prefix("https://") {
            format!("wss://{rest}/ws")
        } else if let Some(rest) = origin.strip_prefix("http://") {
            format!("ws://{rest}/ws")
        } else {
            return Err(format!("--public-origin {origin}: not http:// or https://"));
        };
        return Ok(Some(ws));
    }
    if bound.ip().is_unspecified() {
        return Ok(None);
    }
    let scheme = if tls { "wss" } else { "ws" };
    Ok(Some(format!("{scheme}://{bound}/ws")))
}

/// Advertise this master and keep the view of the others fresh until `stop` flips.
pub fn spawn(
    directory: Arc<MasterDirectory>,
    store: Arc<dyn Store>,
    master_id: Arc<str>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut advertised = directory.own.is_none();
        let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if !advertised {
                match store.advertise_master(&master_id, directory.own()).await {
                    Ok(()) => advertised = true,
                    Err(error) => tracing::warn!(%error, "could not advertise this master"),
                }
            }
            match store.live_masters().await {
                Ok(live) => directory.set_others(live, &master_id),
                Err(error) => tracing::debug!(%error, "could not read the live masters"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_advertised_url_comes_from_the_flag_the_origin_or_the_address() {
        let bound = addr("127.0.0.1:8080");
        assert_eq!(
            advertised_url(Some("wss://a.example/ws"), &[], bound, false).unwrap(),
            Some("wss://a.example/ws".into())
        );
        assert!(advertised_url(Some("https://a.example"), &[], bound, false).is_err());
        assert_eq!(
            advertised_url(None, &["https://grid.example".into()], bound, true).unwrap(),
            Some("wss://grid.example/ws".into())
        );
        assert_eq!(
            advertised_url(None, &[], bound, false).unwrap(),
            Some("ws://127.0.0.1:8080/ws".into())
        );
        assert_eq!(
            advertised_url(None, &[], addr("[::1]:9000"), true).unwrap(),
            Some("wss://[::1]:9000/ws".into())
        );
        assert_eq!(
            advertised_url(None, &[], addr("0.0.0.0:8080"), false).unwrap(),
            None
        );
    }

    #[test]
    fn the_view_leaves_out_this_master_and_repeats() {
        let directory = MasterDirectory::new(Some("ws://a/ws".into()));
        directory.set_others(
            vec![
                ("m-a".into(), "ws://a/ws".into()),
                ("m-b".into(), "ws://b/ws".into()),
                ("m-b2".into(), "ws://b/ws".into()),
                ("m-c".into(), "ws://c/ws".into()),
            ],
            "m-a",
        );
        assert_eq!(directory.others(), ["ws://b/ws", "ws://c/ws"]);
    }
}
