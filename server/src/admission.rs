//! Admission: how many TCP connections and worker sessions the master holds open, globally and
//! per peer, so that no single party can exhaust its file descriptors or memory (issue 19).
//!
//! | what | global cap | per-peer cap | over the cap |
//! |---|---|---|---|
//! | TCP connections (HTTP and WebSocket alike) | [`Limits::max_connections`] (20,000) | [`Limits::max_connections_per_ip`] (64) per address | accepted and closed at once (a 503 or 429 written if the socket takes it), `grid_connections_refused_total{reason}` |
//! | worker sessions at `/ws` | [`Limits::max_ws_sessions`] (20,000) | [`Limits::max_ws_sessions_per_network`] (32) per network key | 429 `too_many_sessions` before the upgrade, `grid_sessions_refused_total{reason}` |
//! | server-sent event streams (job events, dashboard) | [`Limits::max_event_streams`] (256) | [`Limits::max_event_streams_per_network`] (16) per network key | 503 / 429 `too_many_event_streams`, `grid_streams_refused_total{reason}` |
//! | results downloads (NDJSON results, job image) | [`Limits::max_downloads`] (8) | none | 503 `too_many_downloads` with `Retry-After` |
//!
//! Peers on the trusted networks ([`NetworkPolicy::is_trusted`], loopback by default) and listed
//! reverse proxies (whose connections carry many clients) have no per-peer cap; they still
//! count towards the global caps. Connections are keyed on the TCP peer's address (the accept
//! loop has no headers yet; an IPv6 peer by its /64); sessions on the network key of the client address
//! ([`NetworkPolicy::network_of`], after a trusted proxy's `X-Forwarded-For`).
//!
//! A permit ([`ConnectionPermit`], [`SessionPermit`]) is held for as long as the connection or
//! session lives and gives its place back when dropped. The accept loop never waits for a
//! place: over a cap it refuses at once, so a flood cannot stall accepting. A master serving
//! TLS admits first and handshakes after ([`crate::tls`]), so half-open handshakes count too.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::Limits;
use crate::network::NetworkPolicy;

/// The master's admission counters (one per master, in [`crate::AppState`]).
#[derive(Debug)]
pub struct Admission {
    connections: Arc<Semaphore>,
    per_ip: Counts<IpAddr>,
    max_per_ip: usize,
    sessions: Arc<Semaphore>,
    per_network: Counts<String>,
    max_per_network: usize,
    event_streams: Arc<Semaphore>,
    streams_per_network: Counts<String>,
    max_streams_per_network: usize,
    downloads: Arc<Semaphore>,
}

/// Why a connection or a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The global cap is reached.
    Global,
    /// The peer's address or network holds as many as it may.
    PerPeer,
}

impl Refused {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Global => "global",
            Refused::PerPeer => "per_peer",
        }
    }
}

/// One open TCP connection's place; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    _global: OwnedSemaphorePermit,
    _peer: Option<CountGuard<IpAddr>>,
}

/// One worker session's place; dropping it gives the place back.
#[derive(Debug)]
pub struct SessionPermit {
    _global: OwnedSemaphorePermit,
    _network: Option<CountGuard<String>>,
}

/// One event stream's place, held by the stream; dropping it gives the place back.
#[derive(Debug)]
pub struct StreamPermit {
    _global: OwnedSemaphorePermit,
    _network: Option<CountGuard<String>>,
}

/// One results download's place, held by the response body while it streams.
#[derive(Debug)]
pub struct DownloadPermit {
    _global: OwnedSemaphorePermit,
}

impl Admission {
    /// Counters for these limits.
    pub fn new(limits: &Limits) -> Self {
        Admission {
            connections: Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            per_ip: Counts::default(),
            max_per_ip: limits.max_connections_per_ip,
            sessions: Arc::new(Semaphore::new(
                limits.max_ws_sessions.min(Semaphore::MAX_PERMITS),
            )),
            per_network: Counts::default(),
            max_per_network: limits.max_ws_sessions_per_network,
            event_streams: Arc::new(Semaphore::new(
                limits.max_event_streams.min(Semaphore::MAX_PERMITS),
            )),
            streams_per_network: Counts::default(),
            max_streams_per_network: limits.max_event_streams_per_network,
            downloads: Arc::new(Semaphore::new(
                limits.max_downloads.min(Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// A place for a new TCP connection from `ip`, or why not.
    pub fn connection(
        &self,
        ip: IpAddr,
        networks: &NetworkPolicy,
    ) -> Result<ConnectionPermit, Refused> {
        let global = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Global)?;
        let peer = if networks.is_trusted(ip) || networks.is_proxy(ip) {
            None
        } else {
            Some(
                self.per_ip
                    .acquire(address_key(ip), self.max_per_ip)
                    .ok_or(Refused::PerPeer)?,
            )
        };
        metrics::gauge!("grid_connections_open").increment(1.0);
        Ok(ConnectionPermit {
            _global: global,
            _peer: peer,
        })
    }

    /// A place for a new worker session from `network` (`None`: a trusted network), or why not.
    pub fn session(&self, network: Option<&str>) -> Result<SessionPermit, Refused> {
        let global = self
            .sessions
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Global)?;
        let network = match network {
            None => None,
            Some(key) => Some(
                self.per_network
                    .acquire(key.to_owned(), self.max_per_network)
                    .ok_or(Refused::PerPeer)?,
            ),
        };
        Ok(SessionPermit {
            _global: global,
            _network: network,
        })
    }

    /// A place for a new server-sent event stream from `network` (`None`: a trusted
    /// network), or why not.
    pub fn event_stream(&self, network: Option<&str>) -> Result<StreamPermit, Refused> {
        let refused = |refused: Refused| {
            metrics::counter!("grid_streams_refused_total", "reason" => refused.label())
                .increment(1);
            refused
        };
        let global = self
            .event_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused(Refused::Global))?;
        let network = match network {
            None => None,
            Some(key) => Some(
                self.streams_per_network
                    .acquire(key.to_owned(), self.max_streams_per_network)
                    .ok_or_else(|| refused(Refused::PerPeer))?,
            ),
        };
        Ok(StreamPermit {
            _global: global,
            _network: network,
        })
    }

    /// A place for a new results download, or `None` when as many stream as may.
    pub fn download(&self) -> Option<DownloadPermit> {
        let global = self.downloads.clone().try_acquire_owned().ok()?;
        Some(DownloadPermit { _global: global })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        metrics::gauge!("grid_connections_open").decrement(1.0);
    }
}

/// Refuse a connection over a cap: count it, write a short JSON answer if the socket takes it
/// at once (503 over the global cap, 429 over the per-address one), and close. Never waits.
pub fn refuse_connection(stream: TcpStream, refused: Refused) {
    metrics::counter!("grid_connections_refused_total", "reason" => refused.label()).increment(1);
    let (status, message) = match refused {
        Refused::Global => (
            "503 Service Unavailable",
            "the master holds as many connections as it may; try again later",
        ),
        Refused::PerPeer => (
            "429 Too Many Requests",
            "this address holds as many connections as one address may",
        ),
    };
    let body = format!(r#"{{"error":{{"code":"too_many_connections","message":"{message}"}}}}"#);
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    drop(stream);
}

/// An accepted connection holding its place: the place is given back when the socket is
/// dropped, which for a WebSocket is when its session ends (hyper hands the socket over).
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _permit: ConnectionPermit,
}

impl Admitted {
    /// `stream`, holding `permit` while it lives.
    pub fn new(stream: TcpStream, permit: ConnectionPermit) -> Self {
        Admitted {
            stream,
            _permit: permit,
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The key of an address for the per-address cap: an IPv4 address (IPv4-mapped IPv6 ones, as a
/// dual-stack listener reports them, included), or an IPv6 /64 (one host's usual allocation,
/// so that its 2^64 addresses count as one).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                ))
            }
        },
    }
}

/// Counts per key, entries removed when they reach zero (so the map holds only live peers).
#[derive(Debug)]
struct Counts<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts(Arc::new(Mutex::new(HashMap::new())))
    }
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn acquire(&self, key: K, max: usize) -> Option<CountGuard<K>> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= max {
            if *count == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(CountGuard {
            counts: self.0.clone(),
            key: Some(key),
        })
    }
}

/// One place in a [`Counts`]; dropping it gives the place back.
#[derive(Debug)]
struct CountGuard<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: Option<K>,
}

impl<K: Hash + Eq> Drop for CountGuard<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: usize, per_network: usize) -> Limits {
        Limits {
            max_connections: 3,
            max_connections_per_ip: per_ip,
            max_ws_sessions: 3,
            max_ws_sessions_per_network: per_network,
            ..Limits::default()
        }
    }

    #[test]
    fn connections_are_capped_globally_and_per_address() {
        let open = NetworkPolicy::parse("24", "", "").expect("policy");
        let admission = Admission::new(&limits(2, 2));
        let a: IpAddr = "198.51.100.1".parse().expect("ip");
        let b: IpAddr = "198.51.100.2".parse().expect("ip");
        let first = admission.connection(a, &open).expect("first");
        let _second = admission.connection(a, &open).expect("second");
        assert_eq!(admission.connection(a, &open).err(), Some(Refused::PerPeer));
        let _third = admission.connection(b, &open).expect("another address");
        assert_eq!(admission.connection(b, &open).err(), Some(Refused::Global));
        drop(first);
        assert_eq!(admission.per_ip.0.lock().expect("lock").get(&a), Some(&1));
        let _again = admission
            .connection(a, &open)
            .expect("a place was given back");
    }

    #[test]
    fn event_streams_are_capped_globally_and_per_network_and_downloads_globally() {
        let admission = Admission::new(&Limits {
            max_event_streams: 3,
            max_event_streams_per_network: 2,
            max_downloads: 1,
            ..Limits::default()
        });
        let first = admission.event_stream(Some("a")).expect("first");
        let _second = admission.event_stream(Some("a")).expect("second");
        assert_eq!(
            admission.event_stream(Some("a")).err(),
            Some(Refused::PerPeer)
        );
        let _trusted = admission.event_stream(None).expect("a trusted network");
        assert_eq!(
            admission.event_stream(Some("b")).err(),
            Some(Refused::Global)
        );
        drop(first);
        let _again = admission
            .event_stream(Some("a"))
            .expect("a place was given back");

        let download = admission.download().expect("one download");
        assert!(admission.download().is_none(), "a second download at once");
        drop(download);
        assert!(admission.download().is_some(), "the place was given back");
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ones_as_ipv4() {
        let open = NetworkPolicy::parse("24", "", "").expect("policy");
        let admission = Admission::new(&limits(1, 1));
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let _a = admission.connection(a, &open).expect("first");
        assert_eq!(admission.connection(b, &open).err(), Some(Refused::PerPeer));
        let v4: IpAddr = "198.51.100.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().expect("ip");
        let _v4 = admission.connection(v4, &open).expect("v4");
        assert_eq!(
            admission.connection(mapped, &open).err(),
            Some(Refused::PerPeer)
        );
    }

    #[test]
    fn trusted_and_proxies_have_no_per_address_cap() {
        let policy = NetworkPolicy::parse("24", "127.0.0.0/8", "10.0.0.0/8").expect("policy");
        let admission = Admission::new(&limits(1, 1));
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let _a = admission.connection(local, &policy).expect("trusted");
        let _b = admission.connection(local, &policy).expect("trusted again");
        let _c = admission.connection(proxy, &policy).expect("proxy");
        assert!(admission.per_ip.0.lock().expect("lock").is_empty());
    }

    #[test]
    fn sessions_are_capped_per_network() {
        let admission = Admission::new(&limits(10, 1));
        let first = admission.session(Some("198.51.100.0/24")).expect("first");
        assert_eq!(
            admission.session(Some("198.51.100.0/24")).err(),
            Some(Refused::PerPeer)
        );
        let _other = admission.session(Some("203.0.113.0/24")).expect("other");
        let _trusted = admission.session(None).expect("trusted");
        assert_eq!(admission.session(None).err(), Some(Refused::Global));
        drop(first);
        assert!(
            admission
                .per_network
                .0
                .lock()
                .expect("lock")
                .get("198.51.100.0/24")
                .is_none()
        );
    }
}
