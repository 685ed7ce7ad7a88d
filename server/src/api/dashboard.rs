//! `GET /api/v1/dashboard/events`: the dashboard's live feed, as server-sent events.
//!
//! | event | data | when |
//! |---|---|---|
//! | `history` | `{"interval_ms", "samples": [sample...]}` | first: the last ten minutes |
//! | `sample` | a [`Sample`] | every second |
//! | `leaderboard` | as `GET /api/v1/volunteers` | first, then when it changes (checked every 5 s) |
//! | `jobs` | `{"jobs": [job progress...]}` | with a bearer token: first, then when they change |
//!
//! Grid-wide figures are public, like `/metrics`; jobs are shown only with a token, and only
//! the token's own (the admin's: all), the 20 newest. Samples come from the shared
//! [`crate::dashboard::Feed`]; jobs are read from their rows once a second per dashboard.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream;
use serde_json::json;
use tokio::sync::watch;

use super::places::{self, ClientNetwork};
use super::volunteers::{Leaderboard, leaderboard};
use crate::AppState;
use crate::admission::StreamPermit;
use crate::auth::Caller;
use crate::dashboard::{SAMPLE_INTERVAL, Sample};
use crate::error::Result;
use crate::store::Owner;

/// Jobs shown on the dashboard.
pub const DASHBOARD_JOBS: i64 = 20;
/// Leaderboard entries on the dashboard.
const DASHBOARD_VOLUNTEERS: usize = 10;
/// Samples between leaderboard checks.
const LEADERBOARD_EVERY: u32 = 5;

/// The caller, if the request carries a token (a bad token is still a 401).
#[derive(Debug, Clone, Copy)]
pub struct MaybeCaller(pub Option<Caller>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = crate::auth::AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, crate::auth::AuthRejection> {
        if parts.headers.contains_key(AUTHORIZATION) {
            Ok(MaybeCaller(Some(
                Caller::from_request_parts(parts, state).await?,
            )))
        } else {
            Ok(MaybeCaller(None))
        }
    }
}

/// The dashboard's live feed.
#[utoipa::path(
    get,
    operation_id = "dashboard_events",
    path = "/api/v1/dashboard/events",
    tag = "dashboard",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Server-sent events: `history` `{\"interval_ms\",\"samples\"}` \
            first, then `sample` (a Sample) every second, `leaderboard` (a Leaderboard) when it \
            changes, and with a bearer token `jobs` `{\"jobs\": [JobProgress]}` (the token's \
            20 newest jobs) when they change.",
            content_type = "text/event-stream", body = Sample),
        (status = 401, description = "A bearer token was sent and is not valid", body = super::openapi::ErrorBody),
        (status = 429, description = "`too_many_event_streams`: this network holds as many event streams as one may (`--max-event-streams-per-network`)", body = super::openapi::ErrorBody),
        (status = 503, description = "`too_many_event_streams`: the master serves as many event streams as it may (`--max-event-streams`); try again after `Retry-After` seconds", body = super::openapi::ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    network: ClientNetwork,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let permit = places::event_stream(&state, &network)?;
    let samples = state.dashboard.subscribe();
    let feed = DashboardEvents {
        shutdown: state.shutdown.clone(),
        state,
        owner: caller.map(|caller| caller.0),
        samples,
        queue: VecDeque::new(),
        started: false,
        ticks: 0,
        last_jobs: None,
        last_board: None,
        _permit: permit,
    };
    let stream = stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    let text = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Event::default().event(name).data(text)
}

/// The state of one dashboard's stream.
struct DashboardEvents {
    state: AppState,
    /// Whose jobs to show, if anyone's.
    owner: Option<Owner>,
    samples: watch::Receiver<Option<Arc<Sample>>>,
    queue: VecDeque<Event>,
    /// The opening events were queued.
    started: bool,
    /// Samples sent.
    ticks: u32,
    /// The last `jobs` and `leaderboard` data sent, to send only changes.
    last_jobs: Option<String>,
    last_board: Option<String>,
    shutdown: watch::Receiver<bool>,
    /// This stream's place among the master's streams, given back when it ends.
    _permit: StreamPermit,
}

impl DashboardEvents {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if *self.shutdown.borrow() {
                return None;
            }
            if !self.started {
                self.started = true;
                self.samples.mark_unchanged();
                let history = self.state.dashboard.history();
                self.queue.push_back(json_event(
                    "history",
                    &json!({
                        "interval_ms": SAMPLE_INTERVAL.as_millis() as u64,
                        "samples": history,
                    }),
                ));
                self.refresh_leaderboard().await;
                self.refresh_jobs().await;
                continue;
            }
            tokio::select! {
                changed = self.samples.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.shutdown.wait_for(|stopping| *stopping) => return None,
            }
            let sample = self.samples.borrow_and_update().clone();
            if let Some(sample) = sample {
                self.queue.push_back(json_event("sample", &*sample));
            }
            self.ticks = self.ticks.wrapping_add(1);
            if self.ticks.is_multiple_of(LEADERBOARD_EVERY) {
                self.refresh_leaderboard().await;
            }
            self.refresh_jobs().await;
        }
    }

    async fn refresh_leaderboard(&mut self) {
        match self.state.dashboard.credits().await {
            Ok(credits) => {
                let board = Leaderboard {
                    volunteers: leaderboard(&credits, DASHBOARD_VOLUNTEERS),
                    total: credits.len(),
                };
                let text = serde_json::to_string(&board).unwrap_or_default();
                if self.last_board.as_ref() != Some(&text) {
                    self.queue
                        .push_back(Event::default().event("leaderboard").data(&text));
                    self.last_board = Some(text);
                }
            }
            Err(error) => tracing::warn!(%error, "dashboard leaderboard failed"),
        }
    }

    async fn refresh_jobs(&mut self) {
        let Some(owner) = self.owner else { return };
        match self.state.insights.recent_jobs(owner, DASHBOARD_JOBS).await {
            Ok(jobs) => {
                let text = json!({ "jobs": jobs }).to_string();
                if self.last_jobs.as_ref() != Some(&text) {
                    self.queue
                        .push_back(Event::default().event("jobs").data(&text));
                    self.last_jobs = Some(text);
                }
            }
            Err(error) => tracing::warn!(%error, "dashboard jobs failed"),
        }
    }
}
