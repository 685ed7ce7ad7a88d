//! The masters a worker knows: the ones it was given (`--server`, in order of preference) and
//! the ones its masters named in their welcomes (the other live masters sharing their
//! database), tried round robin when a session is lost or a master drains.
//!
//! A master names the others in its welcome, and a connected worker asks it again every
//! [`DEFAULT_REFRESH_INTERVAL`] or so (`--masters-refresh-secs`; `GET /api/v1/masters`,
//! [`refresh`]) so that masters started after the session began are known by the time this
//! one dies. The waits are jittered: ten thousand workers ask about 80 times a second, and the
//! answer costs the master no query. What was named ([`Named`]) is taken
//! into the rotation when the worker next picks a master.
//!
//! Learned masters come second and are bounded: the latest list replaces the previous one
//! (masters that died drop out), holds at most [`MAX_LEARNED`] URLs, and only `ws://` or
//! `wss://` ones. A master could name anything, but a worker already trusts its master with
//! all it computes; the configured masters always stay in the rotation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use url::Url;

/// How often a connected worker asks its master for the live masters, by default.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(120);
/// Largest answer of `GET /api/v1/masters` read.
const MAX_ANSWER_BYTES: usize = 64 << 10;
/// How long one such request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most masters learned from welcomes.
pub const MAX_LEARNED: usize = 16;

/// The rotation of masters a worker connects to.
#[derive(Debug, Clone)]
pub struct Masters {
    configured: Vec<Url>,
    learned: Vec<Url>,
    /// Index of the next master in `configured` followed by `learned`.
    next: usize,
}

impl Masters {
    /// The configured masters, in order of preference; `configured` must not be empty.
    pub fn new(configured: Vec<Url>) -> Masters {
        Masters {
            configured,
            learned: Vec::new(),
            next: 0,
        }
    }

    /// The master to try now; the one after it is tried next time.
    pub fn next_master(&mut self) -> Url {
        let count = self.configured.len() + self.learned.len();
        let index = self.next % count;
        self.next = (index + 1) % count;
        match self.configured.get(index) {
            Some(url) => url.clone(),
            None => self.learned[index - self.configured.len()].clone(),
        }
    }

    /// Take the other masters a welcome named (WebSocket URLs, as text) instead of the ones
    /// learned before. Unparseable, non-WebSocket and already configured URLs are skipped.
    pub fn learn(&mut self, named: &[String]) {
        let mut learned: Vec<Url> = Vec::new();
        for text in named {
            let Ok(url) = Url::parse(text) else { continue };
            if !matches!(url.scheme(), "ws" | "wss") || url.host().is_none() {
                continue;
            }
            if self.configured.contains(&url) || learned.contains(&url) {
                continue;
            }
            learned.push(url);
            if learned.len() == MAX_LEARNED {
                break;
            }
        }
        if learned != self.learned {
            tracing::info!(
                masters = ?learned.iter().map(Url::as_str).collect::<Vec<_>>(),
                "other masters to fail over to"
            );
            // Keep the rotation where it was among the configured ones.
            self.next %= self.configured.len() + learned.len();
            self.learned = learned;
        }
    }

    /// Every master in the rotation, configured first.
    pub fn all(&self) -> impl Iterator<Item = &Url> {
        self.configured.iter().chain(&self.learned)
    }
}

/// The masters last named to this worker (by a welcome or by [`refresh`]), until the
/// reconnect loop takes them into its [`Masters`].
#[derive(Debug, Clone, Default)]
pub struct Named(Arc<Mutex<Option<Vec<String>>>>);

impl Named {
    /// Replace what was named.
    pub fn set(&self, masters: Vec<String>) {
        if let Ok(mut named) = self.0.lock() {
            *named = Some(masters);
        }
    }

    /// What was named since the last call, if anything.
    pub fn take(&self) -> Option<Vec<String>> {
        self.0.lock().ok().and_then(|mut named| named.take())
    }
}

/// Where the master at WebSocket URL `master` lists the live masters (its http side).
pub fn list_url(master: &Url) -> Option<Url> {
    let mut url = master.clone();
    let scheme = match master.scheme() {
        "ws" => "http",
        "wss" => "https",
        _ => return None,
    };
    url.set_scheme(scheme).ok()?;
    url.set_path("/api/v1/masters");
    url.set_query(None);
    Some(url)
}

/// Ask `master` for the live masters about every `interval` (each wait 75–125 % of it) and
/// put its answer in `named`; runs until aborted (when the session ends). Failures are
/// skipped: the session itself notices a dead master.
pub async fn refresh(http: reqwest::Client, master: Url, interval: Duration, named: Named) {
    let Some(url) = list_url(&master) else { return };
    loop {
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        tokio::time::sleep(interval.mul_f64(jitter)).await;
        match fetch(&http, url.clone()).await {
            Ok(masters) => named.set(masters),
            Err(error) => tracing::debug!(%error, "could not list the live masters"),
        }
    }
}

async fn fetch(http: &reqwest::Client, url: Url) -> Result<Vec<String>, String> {
    let mut response = http
        .get(url)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err("answer too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|error| error.to_string())?;
    let masters = answer["masters"]
        .as_array()
        .ok_or("no masters list in the answer")?
        .iter()
        .filter_map(|url| url.as_str().map(str::to_owned))
        .collect();
    Ok(masters)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn configured_masters_rotate_then_learned_ones_join() {
        let mut masters = Masters::new(vec![url("ws://a/ws")]);
        assert_eq!(masters.next_master(), url("ws://a/ws"));
        assert_eq!(masters.next_master(), url("ws://a/ws"));
        masters.learn(&["ws://b/ws".into(), "ws://a/ws".into()]);
        let order: Vec<Url> = (0..4).map(|_| masters.next_master()).collect();
        assert!(order.contains(&url("ws://a/ws")) && order.contains(&url("ws://b/ws")));
        assert_eq!(masters.all().count(), 2);
    }

    #[test]
    fn the_latest_welcome_replaces_what_was_learned() {
        let mut masters = Masters::new(vec![url("ws://a/ws")]);
        masters.learn(&["ws://b/ws".into(), "ws://c/ws".into()]);
        masters.learn(&["ws://c/ws".into()]);
        let all: Vec<&str> = masters.all().map(Url::as_str).collect();
        assert_eq!(all, ["ws://a/ws", "ws://c/ws"]);
        masters.learn(&[]);
        assert_eq!(masters.all().count(), 1);
        for _ in 0..3 {
            assert_eq!(masters.next_master(), url("ws://a/ws"));
        }
    }

    #[test]
    fn the_list_is_on_the_masters_http_side() {
        assert_eq!(
            list_url(&url("ws://127.0.0.1:8080/ws")).unwrap().as_str(),
            "http://127.0.0.1:8080/api/v1/masters"
        );
        assert_eq!(
            list_url(&url("wss://grid.example/ws?x=1"))
                .unwrap()
                .as_str(),
            "https://grid.example/api/v1/masters"
        );
        let named = Named::default();
        assert_eq!(named.take(), None);
        named.set(vec!["ws://b/ws".into()]);
        assert_eq!(named.take(), Some(vec!["ws://b/ws".to_owned()]));
        assert_eq!(named.take(), None);
    }

    #[test]
    fn only_websocket_urls_are_learned_and_only_so_many() {
        let mut masters = Masters::new(vec![url("ws://a/ws")]);
        let mut named: Vec<String> = vec![
            "http://evil/ws".into(),
            "not a url".into(),
            "file:///etc/passwd".into(),
        ];
        named.extend((0..100).map(|i| format!("wss://m{i}.example/ws")));
        masters.learn(&named);
        assert_eq!(masters.all().count(), 1 + MAX_LEARNED);
        assert!(masters.all().skip(1).all(|url| url.scheme() == "wss"));
    }
}
