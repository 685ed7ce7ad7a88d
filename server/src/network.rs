//! Which network a peer is on: the unit of independence for quorums and of the per-network caps.
//!
//! An attacker can make identities for free but networks cost it something (addresses in many
//! /24s or /48s). So the master keys what it must not let one party do twice — give both
//! replicas of a chunk, hold many sessions — on the peer's *network*, not on its identity:
//! - [`NetworkPolicy::client_ip`]: the peer's address, taken from `X-Forwarded-For` only when
//!   the TCP peer is a listed proxy (otherwise anyone could claim any address);
//! - [`NetworkPolicy::network_of`]: the peer's network key (`203.0.113.0/24`), or `None` for
//!   the host's own trusted networks (each of those peers counts as a network of its own, so
//!   the README's local try-out with two workers on one machine still completes).
//!
//! Defaults: IPv4 /24, IPv6 /48, trusted `127.0.0.0/8,::1/128`, no proxies.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Default IPv4 prefix length of a network.
pub const DEFAULT_V4_PREFIX: u8 = 24;
/// Default IPv6 prefix length of a network.
pub const DEFAULT_V6_PREFIX: u8 = 48;
/// Networks trusted by default: the host itself.
pub const DEFAULT_TRUSTED: &str = "127.0.0.0/8,::1/128";

/// How peers are grouped into networks.
#[derive(Debug, Clone)]
pub struct NetworkPolicy {
    /// Prefix lengths `(v4, v6)` that make one network, or `None` when the rule is off (every
    /// peer is a network of its own).
    prefixes: Option<(u8, u8)>,
    /// Networks whose peers are exempt (each peer is its own network).
    trusted: Vec<IpNet>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    proxies: Vec<IpNet>,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        NetworkPolicy {
            prefixes: Some((DEFAULT_V4_PREFIX, DEFAULT_V6_PREFIX)),
            trusted: parse_networks(DEFAULT_TRUSTED).unwrap_or_default(),
            proxies: Vec::new(),
        }
    }
}

impl NetworkPolicy {
    /// From the settings' texts: `distinct` is `off` or `V4[,V6]` prefix lengths (`24,48`);
    /// `trusted` and `proxies` are comma-separated CIDR lists (empty: none).
    pub fn parse(distinct: &str, trusted: &str, proxies: &str) -> Result<Self, String> {
        let prefixes = match distinct.trim() {
            "off" | "none" => None,
            text => {
                let mut parts = text.split(',').map(str::trim);
                let v4 = parts.next().unwrap_or_default();
                let v4: u8 = v4
                    .parse()
                    .ok()
                    .filter(|&p| p <= 32)
                    .ok_or_else(|| format!("IPv4 prefix length {v4:?} is not 0 to 32"))?;
                let v6 = match parts.next() {
                    None => DEFAULT_V6_PREFIX,
                    Some(v6) => v6
                        .parse()
                        .ok()
                        .filter(|&p| p <= 128)
                        .ok_or_else(|| format!("IPv6 prefix length {v6:?} is not 0 to 128"))?,
                };
                Some((v4, v6))
            }
        };
        Ok(NetworkPolicy {
            prefixes,
            trusted: parse_networks(trusted)?,
            proxies: parse_networks(proxies)?,
        })
    }

    /// The client's address: the TCP peer, or the last address `X-Forwarded-For` names when
    /// the peer is a listed proxy (the proxy appends the address it saw; earlier entries are
    /// the client's own claims and worth nothing).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = canonical(peer.ip());
        if !self.proxies.iter().any(|net| net.contains(&peer_ip)) {
            return peer_ip;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|entry| IpAddr::from_str(entry.trim()).ok())
            .next_back()
            .map_or(peer_ip, canonical)
    }

    /// Whether the address is one of the listed reverse proxies.
    pub fn is_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.proxies.iter().any(|net| net.contains(&ip))
    }

    /// Whether the address is on one of the host's trusted networks.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The network key of a client: `Some("198.51.100.0/24")`, or `None` when its address is
    /// trusted or the rule is off (then it is independent of every other peer).
    pub fn network_of(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        let (v4, v6) = self.prefixes?;
        if self.is_trusted(ip) {
            return None;
        }
        let prefix = if ip.is_ipv4() { v4 } else { v6 };
        IpNet::new(ip, prefix)
            .ok()
            .map(|net| net.trunc().to_string())
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack listener reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn parse_networks(text: &str) -> Result<Vec<IpNet>, String> {
    // `none` says "no network" where an empty value is awkward (an empty environment variable).
    if text.trim() == "none" {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            IpNet::from_str(entry)
                .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                .map_err(|_| format!("{entry:?} is not a network (CIDR) or an address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn networks_by_prefix_and_trusted_exempt() {
        let policy = NetworkPolicy::default();
        assert_eq!(
            policy.network_of(ip("198.51.100.7")).as_deref(),
            Some("198.51.100.0/24")
        );
        assert_eq!(
            policy.network_of(ip("2001:db8:1:2::9")).as_deref(),
            Some("2001:db8:1::/48")
        );
        assert_eq!(policy.network_of(ip("127.0.0.1")), None);
        assert_eq!(policy.network_of(ip("::1")), None);
        assert_eq!(policy.network_of(ip("::ffff:127.0.0.1")), None);
        let none_trusted = NetworkPolicy::parse("24", "", "").expect("policy");
        assert_eq!(
            none_trusted.network_of(ip("127.0.1.1")).as_deref(),
            Some("127.0.1.0/24")
        );
        let off = NetworkPolicy::parse("off", "", "").expect("policy");
        assert_eq!(off.network_of(ip("198.51.100.7")), None);
    }

    #[test]
    fn forwarded_for_only_from_listed_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9".parse().expect("h"),
        );
        let peer: SocketAddr = "10.0.0.2:4000".parse().expect("addr");
        let direct = NetworkPolicy::default();
        assert_eq!(direct.client_ip(peer, &headers), ip("10.0.0.2"));
        let proxied = NetworkPolicy::parse("24", "", "10.0.0.0/8").expect("policy");
        assert_eq!(proxied.client_ip(peer, &headers), ip("203.0.113.9"));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(NetworkPolicy::parse("33", "", "").is_err());
        assert!(NetworkPolicy::parse("24,129", "", "").is_err());
        assert!(NetworkPolicy::parse("24", "not-a-net", "").is_err());
        assert!(NetworkPolicy::parse("24", "10.0.0.1", "").is_ok());
        let none = NetworkPolicy::parse("24", "none", "none").expect("policy");
        assert!(!none.is_trusted(ip("127.0.0.1")));
    }
}
