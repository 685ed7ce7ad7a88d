//! Bearer tokens: how they are made, stored (as SHA-256 digests only), checked, cached and
//! revoked, and how guessing them is slowed down.
//!
//! The admin token comes from configuration (at least [`MIN_ADMIN_TOKEN_CHARS`] characters);
//! submitter tokens are created by the admin through `POST /api/v1/tokens`, stored hashed, and
//! revoked with `DELETE /api/v1/tokens/{id}`. [`Caller`] is the extractor every `/api/` handler
//! takes: it answers 401 for a missing or unknown token before the handler runs, and 429 with
//! `Retry-After` when the client's network has failed authentication too often
//! ([`AuthFailures`]).
//!
//! [`TokenCache`] keeps recent answers of the database, both ways (known and unknown digests),
//! for [`TOKEN_CACHE_TTL`] each and bounded in entries, so most requests skip the database and a
//! stream of random tokens cannot fill memory. A revocation drops the token from this master's
//! cache at once; masters sharing the database notice it within [`TOKEN_CACHE_TTL`].
//!
//! Bearer secrets (tokens and worker identities) never go into logs: [`fingerprint`] is what
//! log lines carry instead.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::Error;
use crate::network::NetworkPolicy;
use crate::store::Owner;

/// Shortest admin token the master starts with (`GRID_ADMIN_TOKEN`); generated ones are 69.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;
/// How long the master believes the database's answer about a token: a token revoked on
/// another master sharing the database stops working here within this long.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most known tokens cached.
const KNOWN_TOKENS_CACHED: usize = 10_000;
/// Most unknown digests cached (random guesses cost one database query each, then nothing
/// for [`TOKEN_CACHE_TTL`]; beyond this many the oldest are forgotten).
const UNKNOWN_TOKENS_CACHED: usize = 10_000;
/// Failed authentications one network may have in a burst.
pub const AUTH_FAILURE_BURST: u32 = 20;
/// Failed authentications one network may have per minute once its burst is spent.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 20;
/// Most networks whose failures are tracked at once; beyond it the tracking starts afresh
/// (memory stays bounded; an attacker needs this many networks to reset it).
const TRACKED_NETWORKS: usize = 65_536;

/// SHA-256 of a token, the only form in which tokens are kept.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: `grid_` and 256 random bits in hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("grid_{}", hex::encode(bytes))
}

/// What logs say instead of a bearer secret (a token, a worker identity): the first 8 hex
/// digits of its SHA-256, enough to tell log lines of one secret apart, useless to an attacker.
pub fn fingerprint(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..4])
}

/// Whether `token` may be the admin token; the error says why not.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    let chars = token.trim().chars().count();
    if chars < MIN_ADMIN_TOKEN_CHARS {
        return Err(format!(
            "the admin token has {chars} characters; it needs at least {MIN_ADMIN_TOKEN_CHARS} \
             (unset GRID_ADMIN_TOKEN to have one generated)"
        ));
    }
    Ok(())
}

/// Recent answers of the database about token digests, known and unknown alike, each for
/// [`TOKEN_CACHE_TTL`]; bounded in entries.
#[derive(Debug, Clone)]
pub struct TokenCache {
    /// Digest → (token id, when the database said so).
    known: std::sync::Arc<quick_cache::sync::Cache<[u8; 32], (i64, Instant)>>,
    /// Digests the database did not know, and when.
    unknown: std::sync::Arc<quick_cache::sync::Cache<[u8; 32], Instant>>,
    /// How long an answer holds.
    ttl: Duration,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::with_ttl(TOKEN_CACHE_TTL)
    }
}

/// What the cache says about a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cached {
    Known(i64),
    Unknown,
    Ask,
}

impl TokenCache {
    /// A cache whose answers hold for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        TokenCache {
            known: std::sync::Arc::new(quick_cache::sync::Cache::new(KNOWN_TOKENS_CACHED)),
            unknown: std::sync::Arc::new(quick_cache::sync::Cache::new(UNKNOWN_TOKENS_CACHED)),
            ttl,
        }
    }

    fn lookup(&self, digest: &[u8; 32]) -> Cached {
        let fresh = |at: Instant| at.elapsed() < self.ttl;
        if let Some((id, at)) = self.known.get(digest) {
            if fresh(at) {
                return Cached::Known(id);
            }
            self.known.remove(digest);
        }
        if let Some(at) = self.unknown.get(digest) {
            if fresh(at) {
                return Cached::Unknown;
            }
            self.unknown.remove(digest);
        }
        Cached::Ask
    }

    fn remember(&self, digest: [u8; 32], id: Option<i64>) {
        let now = Instant::now();
        match id {
            Some(id) => {
                self.unknown.remove(&digest);
                self.known.insert(digest, (id, now));
            }
            None => {
                self.known.remove(&digest);
                self.unknown.insert(digest, now);
            }
        }
    }

    /// Forget token `id` at once (it was revoked here).
    pub fn forget(&self, id: i64) {
        self.known.retain(|_, (known, _)| *known != id);
    }

    /// Entries held (known, unknown), for tests and metrics.
    pub fn len(&self) -> (usize, usize) {
        (self.known.len(), self.unknown.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

/// Failed authentications per client network, as token buckets: [`AUTH_FAILURE_BURST`] at
/// once, then [`AUTH_FAILURES_PER_MINUTE`]. A network with an empty bucket gets 429 for every
/// token the cache does not already know, so guessing costs the database nothing.
#[derive(Debug)]
pub struct AuthFailures {
    buckets: Mutex<HashMap<String, Bucket>>,
    burst: f64,
    per_second: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for AuthFailures {
    fn default() -> Self {
        AuthFailures::new(AUTH_FAILURE_BURST, AUTH_FAILURES_PER_MINUTE)
    }
}

impl AuthFailures {
    /// `burst` failures at once, `per_minute` sustained.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        AuthFailures {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// `None` if `network` may try a token; otherwise how long until it may.
    fn blocked(&self, network: &str) -> Option<Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = *buckets.get(network)?;
        let tokens = self.refilled(bucket, Instant::now());
        if tokens >= 1.0 {
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
    }

    /// Count one failure of `network`.
    fn failed(&self, network: &str) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= TRACKED_NETWORKS && !buckets.contains_key(network) {
            // Forget the networks that have recovered; if that is not enough, start afresh.
            buckets.retain(|_, bucket| self.refilled(*bucket, now) < self.burst);
            if buckets.len() >= TRACKED_NETWORKS {
                buckets.clear();
            }
        }
        let burst = self.burst;
        let bucket = buckets.entry(network.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = self.refilled(*bucket, now);
        *bucket = Bucket {
            tokens: (tokens - 1.0).max(0.0),
            at: now,
        };
    }

    /// Networks tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The key failures are counted under: the client's network (see [`NetworkPolicy`]), or its
/// address on a trusted network (where each address is a network of its own).
fn failure_key(networks: &NetworkPolicy, ip: IpAddr) -> String {
    networks.network_of(ip).unwrap_or_else(|| ip.to_string())
}

/// The authenticated caller of an `/api/` request.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Owner);

impl Caller {
    /// Whether the caller holds the admin token.
    pub fn is_admin(&self) -> bool {
        self.0 == Owner::Admin
    }
}

/// Why [`Caller`] refused a request: an API error (401, or a database failure), or too many
/// failed attempts from the client's network (429 with `Retry-After`).
#[derive(Debug)]
pub enum AuthRejection {
    /// 401 and the like.
    Error(Error),
    /// 429 `too_many_auth_failures`; try again after this long.
    TooManyFailures(Duration),
}

impl From<Error> for AuthRejection {
    fn from(error: Error) -> Self {
        AuthRejection::Error(error)
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            AuthRejection::Error(error) => error.into_response(),
            AuthRejection::TooManyFailures(wait) => {
                let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
                let body = json!({"error": {
                    "code": "too_many_auth_failures",
                    "message": format!(
                        "too many failed authentications from this network; retry in {seconds} s"
                    ),
                }});
                let mut response =
                    (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
                response
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, AuthRejection> {
        // Routers driven without a listener (tests with `oneshot`) have no peer address.
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |ConnectInfo(addr)| {
                state.networks.client_ip(*addr, &parts.headers)
            });
        let key = failure_key(&state.networks, ip);
        let fail = |state: &AppState| {
            state.auth_failures.failed(&key);
            metrics::counter!("grid_auth_failures_total").increment(1);
            AuthRejection::Error(Error::Unauthorized)
        };
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|header| header.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty());
        let Some(token) = token else {
            // No token at all is not a guess: 401 without counting it.
            return Err(Error::Unauthorized.into());
        };
        let digest = hash_token(token);
        // A token this master knows passes even from a network that failed too often (a
        // guess is never known); everything else waits out the network's failures, the admin
        // token included, so that it cannot be brute-forced either.
        let cached = state.tokens.lookup(&digest);
        if let Cached::Known(id) = cached {
            return Ok(Caller(Owner::Submitter(id)));
        }
        if let Some(wait) = state.auth_failures.blocked(&key) {
            return Err(AuthRejection::TooManyFailures(wait));
        }
        if let Some(admin) = &state.admin_token_hash
            && constant_time_eq(admin, &digest)
        {
            return Ok(Caller(Owner::Admin));
        }
        if cached == Cached::Unknown {
            return Err(fail(state));
        }
        let found = state.store.find_token(&digest).await.map_err(Error::from)?;
        state.tokens.remember(digest, found);
        match found {
            Some(id) => Ok(Caller(Owner::Submitter(id))),
            None => Err(fail(state)),
        }
    }
}

/// Digest comparison in constant time (the admin digest is a secret's hash; no early exit).
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_admin_tokens_are_refused() {
        assert!(check_admin_token("short").is_err());
        assert!(check_admin_token("                 x").is_err());
        assert!(check_admin_token("sixteen-chars-ok").is_ok());
        assert!(check_admin_token(&new_token()).is_ok());
    }

    #[test]
    fn fingerprints_hide_the_secret() {
        let secret = "native-0123456789abcdef0123456789abcdef";
        let print = fingerprint(secret);
        assert_eq!(print.len(), 8);
        assert!(!secret.contains(&print));
        assert_eq!(print, fingerprint(secret));
        assert_ne!(print, fingerprint("native-other"));
    }

    #[test]
    fn cached_answers_expire() {
        let cache = TokenCache::with_ttl(Duration::from_millis(50));
        let (a, b) = ([1; 32], [2; 32]);
        assert_eq!(cache.lookup(&a), Cached::Ask);
        cache.remember(a, Some(7));
        cache.remember(b, None);
        assert_eq!(cache.lookup(&a), Cached::Known(7));
        assert_eq!(cache.lookup(&b), Cached::Unknown);
        cache.forget(7);
        assert_eq!(cache.lookup(&a), Cached::Ask);
        cache.remember(a, Some(7));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.lookup(&a), Cached::Ask);
        assert_eq!(cache.lookup(&b), Cached::Ask);
        assert!(cache.is_empty());
    }

    #[test]
    fn unknown_digests_are_bounded() {
        let cache = TokenCache::default();
        for i in 0..(UNKNOWN_TOKENS_CACHED as u32 * 3) {
            let mut digest = [0; 32];
            digest[..4].copy_from_slice(&i.to_le_bytes());
            cache.remember(digest, None);
        }
        let (_, unknown) = cache.len();
        assert!(
            unknown <= UNKNOWN_TOKENS_CACHED + UNKNOWN_TOKENS_CACHED / 10,
            "{unknown}"
        );
    }

    #[test]
    fn failures_are_limited_per_network() {
        let failures = AuthFailures::new(3, 60);
        for _ in 0..3 {
            assert_eq!(failures.blocked("198.51.100.0/24"), None);
            failures.failed("198.51.100.0/24");
        }
        let wait = failures.blocked("198.51.100.0/24").expect("blocked");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(failures.blocked("203.0.113.0/24"), None);
        std::thread::sleep(wait + Duration::from_millis(20));
        assert_eq!(failures.blocked("198.51.100.0/24"), None);
    }

    #[test]
    fn tracked_networks_are_bounded() {
        let failures = AuthFailures::new(1, 1);
        for i in 0..(TRACKED_NETWORKS + 10) {
            failures.failed(&format!("net-{i}"));
        }
        assert!(failures.tracked() <= TRACKED_NETWORKS);
    }
}
