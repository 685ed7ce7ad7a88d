//! The masters a worker knows: the ones it was given (`--server`, in order of preference) and
//! the ones its masters named in their welcomes (the other live masters sharing their
//! database), tried round robin when a session is lost or a master drains.
//!
//! Learned masters come second and are bounded: the latest welcome's list replaces the
//! previous one (masters that died drop out), holds at most [`MAX_LEARNED`] URLs, and only
//! `ws://` or `wss://` ones. A master could name anything, but a worker already trusts its
//! master with all it computes; the configured masters always stay in the rotation.

use url::Url;

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
