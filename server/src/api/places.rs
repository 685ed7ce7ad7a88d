//! Places on the master's streaming routes: event streams (capped globally and per network)
//! and results downloads (capped globally), taken from [`crate::admission::Admission`] and
//! held by the response body for as long as it streams. Over a cap, the API's JSON error with
//! `Retry-After`, so a client (the pages' `sse.js`, the CLI) waits and tries again.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::AppState;
use crate::admission::{DownloadPermit, Refused, StreamPermit};
use crate::error::{Error, Result};

/// Seconds a refused client is asked to wait before trying again.
const RETRY_AFTER_SECONDS: u32 = 5;

/// The network key of the request's client (after a trusted proxy's `X-Forwarded-For`), or
/// `None` for the trusted networks, which have no per-network caps.
#[derive(Debug, Clone)]
pub struct ClientNetwork(pub Option<String>);

impl FromRequestParts<AppState> for ClientNetwork {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> std::result::Result<Self, Infallible> {
        // Routers driven without a listener (tests with `oneshot`) have no peer address.
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |ConnectInfo(addr)| {
                state.networks.client_ip(*addr, &parts.headers)
            });
        Ok(ClientNetwork(state.networks.network_of(ip)))
    }
}

/// A place for one more event stream from `network`, or 503 (the master's cap) / 429 (the
/// network's) `too_many_event_streams`.
pub fn event_stream(state: &AppState, network: &ClientNetwork) -> Result<StreamPermit> {
    state
        .admission
        .event_stream(network.0.as_deref())
        .map_err(|refused| match refused {
            Refused::Global => Error::Busy {
                code: "too_many_event_streams",
                retry_after_seconds: RETRY_AFTER_SECONDS,
                message: format!(
                    "the master serves {} event streams, its most; try again later",
                    state.limits.max_event_streams
                ),
            },
            Refused::PerPeer => Error::TooMany {
                code: "too_many_event_streams",
                message: format!(
                    "network {} holds {} event streams, the most one network may",
                    network.0.as_deref().unwrap_or_default(),
                    state.limits.max_event_streams_per_network
                ),
            },
        })
}

/// A place for one more results download, or 503 `too_many_downloads`.
pub fn download(state: &AppState) -> Result<DownloadPermit> {
    state.admission.download().ok_or_else(|| {
        metrics::counter!("grid_downloads_refused_total").increment(1);
        Error::Busy {
            code: "too_many_downloads",
            retry_after_seconds: RETRY_AFTER_SECONDS,
            message: format!(
                "the master streams {} results downloads, its most; try again in a few seconds",
                state.limits.max_downloads
            ),
        }
    })
}
