//! `GET /api/v1/jobs/{id}/events`: a job's progress as server-sent events.
//!
//! | event | data | when |
//! |---|---|---|
//! | `job` | the job (as `GET /api/v1/jobs/{id}`) | first |
//! | `chunk_accepted` | `{"index", "agreeing"}` | a chunk reached its quorum |
//! | `chunk_failed` | `{"index", "error"}` | a chunk failed (agreed error, or no quorum) |
//! | `progress` | `{"state", "chunks": {"total", "done", "failed", "revised"}}` | the counters changed |
//! | `job_done` | the job | it reached `done`, `failed` or `cancelled`; the stream then ends |
//!
//! Chunks decided before the request are sent first, in the order they were decided, so a
//! client sees every chunk whenever it connects; a chunk reopened by backtracking and decided
//! again is sent again.
//!
//! How: the stream polls the database every [`POLL_INTERVAL`] (so it works whichever master
//! decided the chunks): the job's row first (cheap), and only when its counters moved, the
//! job's chunks decided after a cursor `(finished_at, index)`, through the `chunks_finished`
//! index. If the chunks seen fall short of the counters afterwards (a commit that took its
//! timestamp before another master's commit yet finished after it), the job's decided chunks
//! are scanned once by index to catch up. The stream ends with the job, or when the master
//! shuts down.
//!
//! Bounds (issue 19, M2): a stream keeps one bit per chunk ([`ChunkSet`], 125 KiB for a
//! 1,000,000-chunk job), reads errors cut to [`EVENT_ERROR_CHARS`] characters, and holds a
//! place ([`super::places::event_stream`]): at most `--max-event-streams` (256) at once, and
//! `--max-event-streams-per-network` (16) from one network outside the trusted ones.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use futures_util::stream;
use grid_protocol::states::ChunkState;
use serde_json::json;
use tokio::sync::watch;

use super::places::{self, ClientNetwork};
use crate::AppState;
use crate::admission::StreamPermit;
use crate::auth::Caller;
use crate::error::{Error, Result};
#[cfg(doc)]
use crate::limits::EVENT_ERROR_CHARS;
use crate::store::insights::{DecidedChunk, Insights, JobProgress};
use crate::store::{Owner, Store};

/// How often a stream looks at the database.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Decided chunks read per query.
const PAGE: i64 = 1000;

/// The events of one job.
#[utoipa::path(
    get,
    operation_id = "job_events",
    path = "/api/v1/jobs/{id}/events",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "Server-sent events: `job` (the job), then \
            `chunk_accepted` `{\"index\",\"agreeing\"}` and `chunk_failed` `{\"index\",\"error\"}` \
            for every decided chunk (those decided earlier first), `progress` \
            `{\"state\",\"chunks\"}` when the counters move, and `job_done` (the job) when it \
            is done, failed or cancelled, after which the stream ends.",
            content_type = "text/event-stream", body = String),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = super::openapi::ErrorBody),
        (status = 429, description = "`too_many_event_streams`: this network holds as many event streams as one may (`--max-event-streams-per-network`)", body = super::openapi::ErrorBody),
        (status = 503, description = "`too_many_event_streams`: the master serves as many event streams as it may (`--max-event-streams`); try again after `Retry-After` seconds", body = super::openapi::ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    network: ClientNetwork,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id: i64 = id.parse().map_err(|_| Error::NotFound("job"))?;
    let view = state
        .store
        .job(caller.0, id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    let permit = places::event_stream(&state, &network)?;
    let mut queue = VecDeque::new();
    queue.push_back(json_event("job", &view));
    let total = usize::try_from(view.chunks.total).unwrap_or(0);
    let events = JobEvents {
        store: Arc::clone(&state.store),
        insights: Arc::clone(&state.insights),
        owner: caller.0,
        id,
        queue,
        seen: ChunkSet::new(total),
        cursor: None,
        progress: None,
        polled: false,
        catching_up: None,
        ended: false,
        shutdown: state.shutdown.clone(),
        _permit: permit,
    };
    let stream = stream::unfold(events, |mut events| async move {
        let event = events.next().await?;
        Some((Ok(event), events))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    let text = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Event::default().event(name).data(text)
}

/// The state of one job's event stream.
struct JobEvents {
    store: Arc<dyn Store>,
    insights: Arc<dyn Insights>,
    owner: Owner,
    id: i64,
    /// Events ready to send.
    queue: VecDeque<Event>,
    /// The chunks with a decision sent.
    seen: ChunkSet,
    /// The last decided chunk read, in `(finished_at, index)` order.
    cursor: Option<(DateTime<Utc>, i32)>,
    /// The job's counters when last sent.
    progress: Option<JobProgress>,
    /// Whether the database was polled at least once (the first poll does not wait).
    polled: bool,
    /// The counters being caught up with, while decisions are read page by page.
    catching_up: Option<JobProgress>,
    /// The final event was queued.
    ended: bool,
    /// The master's shutdown signal: streams end with it.
    shutdown: watch::Receiver<bool>,
    /// This stream's place among the master's streams, given back when it ends.
    _permit: StreamPermit,
}

/// A set of chunk indexes, one bit each.
#[derive(Debug)]
struct ChunkSet {
    words: Vec<u64>,
    capacity: usize,
    len: usize,
}

impl ChunkSet {
    /// An empty set of indexes below `capacity`.
    fn new(capacity: usize) -> Self {
        ChunkSet {
            words: vec![0; capacity.div_ceil(64)],
            capacity,
            len: 0,
        }
    }

    /// Add `index`; false when it is out of range.
    fn insert(&mut self, index: usize) -> bool {
        if index >= self.capacity {
            return false;
        }
        let Some(word) = self.words.get_mut(index / 64) else {
            return false;
        };
        let bit = 1u64 << (index % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.len += 1;
        }
        true
    }

    fn contains(&self, index: usize) -> bool {
        index < self.capacity
            && self
                .words
                .get(index / 64)
                .is_some_and(|word| word & (1u64 << (index % 64)) != 0)
    }

    /// How many indexes are in the set.
    fn len(&self) -> usize {
        self.len
    }
}

impl JobEvents {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.ended || *self.shutdown.borrow() {
                return None;
            }
            // Wait between polls, not while catching up page by page.
            if self.polled && self.catching_up.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    _ = self.shutdown.wait_for(|stopping| *stopping) => return None,
                }
            }
            self.polled = true;
            if let Err(error) = self.step().await {
                // Try again at the next poll; the client keeps its connection.
                tracing::warn!(%error, job = self.id, "job events poll failed");
                self.catching_up = None;
            }
        }
    }

    /// Send a decision read past the cursor: each is read there once, so each is new (a
    /// chunk reopened by backtracking and decided again is sent again).
    fn decided(&mut self, chunk: &DecidedChunk) {
        let Some(index) = usize::try_from(chunk.index).ok() else {
            return;
        };
        if !self.seen.insert(index) {
            return;
        }
        let event = if chunk.state == ChunkState::Done {
            json_event(
                "chunk_accepted",
                &json!({"index": chunk.index, "agreeing": chunk.agreeing}),
            )
        } else {
            json_event(
                "chunk_failed",
                &json!({"index": chunk.index, "error": chunk.error.as_deref().unwrap_or("failed")}),
            )
        };
        self.queue.push_back(event);
    }

    /// Send a decision found by the scan by index if the cursor missed it for good: its chunk
    /// has no decision sent, and it lies at or before the cursor (one after the cursor is
    /// read there next, and sent then).
    fn missed(&mut self, chunk: &DecidedChunk) {
        let behind = self
            .cursor
            .is_some_and(|cursor| (chunk.finished_at, chunk.index) <= cursor);
        let sent = usize::try_from(chunk.index).is_ok_and(|index| self.seen.contains(index));
        if behind && !sent {
            self.decided(chunk);
        }
    }

    /// One poll of the job's row, or one page of decisions while catching up with it.
    async fn step(&mut self) -> Result<()> {
        let progress = match self.catching_up.take() {
            Some(progress) => progress,
            None => {
                let Some(progress) = self.insights.job_progress(self.owner, self.id).await? else {
                    self.ended = true;
                    return Ok(());
                };
                if self.progress.as_ref() == Some(&progress) {
                    return Ok(());
                }
                progress
            }
        };
        let page = self
            .insights
            .decided_since(self.id, self.cursor, PAGE)
            .await?;
        for chunk in &page {
            self.decided(chunk);
        }
        if let Some(last) = page.last() {
            self.cursor = Some((last.finished_at, last.index));
        }
        if page.len() as i64 == PAGE {
            self.catching_up = Some(progress);
            return Ok(());
        }
        let decided = usize::try_from(progress.chunks.done + progress.chunks.failed).unwrap_or(0);
        if self.seen.len() < decided {
            self.reconcile().await?;
        }
        self.queue.push_back(json_event(
            "progress",
            &json!({"state": progress.state, "chunks": progress.chunks}),
        ));
        if progress.is_finished() {
            match self.store.job(self.owner, self.id).await? {
                Some(view) => self.queue.push_back(json_event("job_done", &view)),
                None => self.queue.push_back(json_event("job_done", &progress)),
            }
            self.ended = true;
        }
        self.progress = Some(progress);
        Ok(())
    }

    /// Scan every decided chunk by index and send what the cursor missed.
    async fn reconcile(&mut self) -> Result<()> {
        let mut after = -1;
        loop {
            let page = self.insights.decided_page(self.id, after, PAGE).await?;
            for chunk in &page {
                self.missed(chunk);
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => after = last.index,
                _ => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkSet;

    #[test]
    fn a_chunk_set_counts_each_index_once_and_refuses_out_of_range() {
        let mut set = ChunkSet::new(130);
        assert!(set.insert(0));
        assert!(set.insert(129));
        assert!(set.insert(129));
        assert!(!set.insert(130));
        assert_eq!(set.len(), 2);
        assert!(set.contains(129) && !set.contains(64));
        assert_eq!(ChunkSet::new(1_000_000).words.len() * 8, 125_000);
    }
}
