//! One worker's WebSocket session at `/ws`: the hello handshake, then a reader that validates
//! and forwards messages to the scheduler, and a writer that sends what the scheduler queues.
//!
//! Hostile or broken peers get a protocol `error` message and a close frame — never a panic:
//! malformed JSON, unknown message types, oversized frames, a second hello, a flood of
//! messages, or silence longer than three heartbeat intervals all end the session cleanly.
//! Ending a session (for any reason) hands its leases back to the scheduler at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::{SinkExt, StreamExt};
use grid_protocol::{
    MAX_SLOTS, MasterMessage, Outcome, PROTOCOL_VERSION, WorkerMessage, is_valid_worker_id,
    outcome_digest,
};
use tokio::sync::{mpsc, watch};

use crate::AppState;
use crate::scheduler::{Event, Outbound, SessionId};

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the master ends a session: sent as an `error` message, then as the close frame.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
    close_code: u16,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>, close_code: u16) -> Self {
        Refusal {
            code,
            message: message.into(),
            close_code,
        }
    }

    fn protocol(message: impl Into<String>) -> Self {
        Refusal::new("bad_message", message, close_code::POLICY)
    }
}

/// A token bucket limiting how many messages per second a peer may send.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_second: u32, burst: u32) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a session's peer connects from.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address (after a trusted proxy's `X-Forwarded-For`).
    pub ip: std::net::IpAddr,
    /// Its network key, `None` on a trusted network (see [`crate::network`]).
    pub network: Option<String>,
}

/// Serve one upgraded connection until it ends.
pub async fn run(socket: WebSocket, state: AppState, peer: Peer, shutdown: watch::Receiver<bool>) {
    let (mut sink, mut stream) = socket.split();
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<Outbound>();
    let (close_tx, mut close_rx) = mpsc::channel::<CloseFrame>(1);

    // The writer: everything the master sends goes through here, so frames never interleave.
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                frame = close_rx.recv() => {
                    // Flush what the scheduler queued before the refusal, then close.
                    while let Ok(Outbound::Message(message)) = outgoing.try_recv() {
                        let text = grid_protocol::to_json(&message);
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    if let Some(frame) = frame {
                        let _ = sink.send(Message::Close(Some(frame))).await;
                    }
                    let _ = sink.close().await;
                    return;
                }
                message = outgoing.recv() => {
                    let Some(Outbound::Message(message)) = message else {
                        let _ = sink.close().await;
                        return;
                    };
                    let text = grid_protocol::to_json(&message);
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });

    let session = state.scheduler.new_session_id();
    let result = read_loop(&mut stream, &state, session, &peer, &outbox, shutdown).await;
    let registered = !matches!(result, ReadEnd::BeforeHello(_));
    let frame = match result {
        ReadEnd::PeerClosed => None,
        ReadEnd::Refused(refusal) | ReadEnd::BeforeHello(refusal) => {
            tracing::info!(session, code = refusal.code, message = %refusal.message, "closing session");
            let _ = outbox.send(Outbound::Message(MasterMessage::Error {
                code: refusal.code.into(),
                message: refusal.message.clone(),
            }));
            Some(CloseFrame {
                code: refusal.close_code,
                reason: Utf8Bytes::from(truncate(&refusal.message, 120)),
            })
        }
    };
    if registered {
        // Hand the session's leases back before anything else can happen to them.
        state.scheduler.send(Event::Disconnected { session }).await;
    }
    let _ = close_tx
        .send(frame.unwrap_or(CloseFrame {
            code: close_code::NORMAL,
            reason: Utf8Bytes::from_static("bye"),
        }))
        .await;
    drop(outbox);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// How the read side ended.
enum ReadEnd {
    /// The peer closed or the connection dropped.
    PeerClosed,
    /// The master refused something before the session was registered.
    BeforeHello(Refusal),
    /// The master refused something after registration.
    Refused(Refusal),
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    state: &AppState,
    session: SessionId,
    peer: &Peer,
    outbox: &mpsc::UnboundedSender<Outbound>,
    mut shutdown: watch::Receiver<bool>,
) -> ReadEnd {
    let limits = &state.limits;
    let mut rate = RateLimit::new(limits.ws_messages_per_second, limits.ws_message_burst);

    // Hello first.
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_text(stream)).await {
        Err(_) => {
            return ReadEnd::BeforeHello(Refusal::new(
                "hello_timeout",
                "no hello within 10 seconds",
                close_code::POLICY,
            ));
        }
        Ok(Next::Closed) => return ReadEnd::PeerClosed,
        Ok(Next::Refused(refusal)) => return ReadEnd::BeforeHello(refusal),
        Ok(Next::Text(text)) => text,
    };
    let (worker_id, kind, slots) = match WorkerMessage::from_json(&hello) {
        Ok(WorkerMessage::Hello {
            protocol,
            worker_id,
            slots,
            kind,
        }) => {
            if protocol != PROTOCOL_VERSION {
                return ReadEnd::BeforeHello(Refusal::new(
                    grid_protocol::ERROR_UNSUPPORTED_PROTOCOL,
                    format!(
                        "this master speaks protocol {PROTOCOL_VERSION}, not {protocol}: upgrade the worker"
                    ),
                    close_code::PROTOCOL,
                ));
            }
            if !is_valid_worker_id(&worker_id) {
                return ReadEnd::BeforeHello(Refusal::protocol(
                    "worker_id must be 1 to 128 characters of [A-Za-z0-9._:-]",
                ));
            }
            if slots == 0 || slots > MAX_SLOTS {
                return ReadEnd::BeforeHello(Refusal::protocol(format!(
                    "slots must be between 1 and {MAX_SLOTS}"
                )));
            }
            (Arc::<str>::from(worker_id), kind, slots)
        }
        Ok(_) => return ReadEnd::BeforeHello(Refusal::protocol("the first message must be hello")),
        Err(error) => {
            return ReadEnd::BeforeHello(Refusal::protocol(format!("malformed hello: {error}")));
        }
    };
    let _ = outbox.send(Outbound::Message(MasterMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        heartbeat_seconds: limits.heartbeat_seconds,
        max_message_bytes: u32::try_from(limits.max_ws_message_bytes).unwrap_or(u32::MAX),
    }));
    let registered = state
        .scheduler
        .send(Event::Connected {
            session,
            worker_id: worker_id.clone(),
            network: peer.network.as_deref().map(Arc::from),
            kind,
            slots,
            outbox: outbox.clone(),
        })
        .await;
    if !registered {
        return ReadEnd::BeforeHello(Refusal::new(
            "shutting_down",
            "the master is shutting down",
            close_code::AWAY,
        ));
    }
    tracing::info!(session, worker = %worker_id, ?kind, slots, "worker connected");

    let idle_limit = Duration::from_secs(u64::from(limits.heartbeat_seconds) * 3);
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle_limit, next_text(stream)) => next,
            _ = shutdown.wait_for(|stop| *stop) => {
                return ReadEnd::Refused(Refusal::new(
                    "shutting_down",
                    "the master is shutting down; reconnect later",
                    close_code::AWAY,
                ));
            }
        };
        let text = match next {
            Err(_) => {
                return ReadEnd::Refused(Refusal::new(
                    "idle_timeout",
                    "no message for three heartbeat intervals",
                    close_code::POLICY,
                ));
            }
            Ok(Next::Closed) => return ReadEnd::PeerClosed,
            Ok(Next::Refused(refusal)) => return ReadEnd::Refused(refusal),
            Ok(Next::Text(text)) => text,
        };
        if !rate.allow() {
            return ReadEnd::Refused(Refusal::new(
                "rate_limited",
                format!(
                    "more than {} messages per second",
                    limits.ws_messages_per_second
                ),
                close_code::POLICY,
            ));
        }
        let message = match WorkerMessage::from_json(&text) {
            Ok(message) => message,
            Err(error) => {
                return ReadEnd::Refused(Refusal::protocol(format!("malformed message: {error}")));
            }
        };
        let event = match message {
            WorkerMessage::Hello { .. } => {
                return ReadEnd::Refused(Refusal::protocol("hello may only be sent once"));
            }
            WorkerMessage::Heartbeat => continue,
            WorkerMessage::Drain => Event::WorkerDrain { session },
            WorkerMessage::Release { leases } => Event::Release { session, leases },
            WorkerMessage::Result { lease, outcome } => {
                // Outputs are canonical JSON, whose escapes keep control characters out of the
                // text; an error message is free text and is made storable here (PostgreSQL
                // refuses NUL in text, and one such row would fail a whole group commit).
                let text = match &outcome {
                    Outcome::Ok(_) => outcome.canonical_text(),
                    Outcome::Err(message) => storable_text(message),
                };
                if text.len() > limits.max_output_bytes {
                    return ReadEnd::Refused(Refusal::new(
                        "too_large",
                        format!(
                            "an outcome may be at most {} bytes, this one is {}",
                            limits.max_output_bytes,
                            text.len()
                        ),
                        close_code::SIZE,
                    ));
                }
                Event::Result {
                    session,
                    lease,
                    digest: outcome_digest(&outcome),
                    is_error: matches!(outcome, Outcome::Err(_)),
                    text,
                }
            }
        };
        if !state.scheduler.send(event).await {
            return ReadEnd::Refused(Refusal::new(
                "shutting_down",
                "the master is shutting down",
                close_code::AWAY,
            ));
        }
    }
}

enum Next {
    Text(String),
    Closed,
    Refused(Refusal),
}

/// The next text frame, answering pings along the way.
async fn next_text(stream: &mut futures_util::stream::SplitStream<WebSocket>) -> Next {
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => return Next::Closed,
            Some(Ok(Message::Text(text))) => return Next::Text(text.to_string()),
            // axum answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                return Next::Refused(Refusal::new(
                    "bad_message",
                    "binary frames are not part of the protocol; send JSON text",
                    close_code::UNSUPPORTED,
                ));
            }
            Some(Err(error)) => {
                let message = error.to_string();
                // tungstenite reports an over-size message as a capacity error.
                if message.contains("Space limit exceeded") || message.contains("too long") {
                    return Next::Refused(Refusal::new("too_large", message, close_code::SIZE));
                }
                tracing::debug!(%error, "websocket read error");
                return Next::Closed;
            }
        }
    }
}

/// Free text as it may be stored and shown: control characters other than newline and tab
/// written as `\u{..}` escapes, so the text holds no NUL and cannot forge log or terminal
/// output. Honest workers' identical messages stay identical.
fn storable_text(text: &str) -> String {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::storable_text;

    #[test]
    fn error_texts_lose_control_characters_but_keep_their_meaning() {
        assert_eq!(storable_text("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(storable_text("a\u{0}b"), "a\\u{0000}b");
        assert_eq!(storable_text("\u{1b}[31mred"), "\\u{001b}[31mred");
        assert!(
            !storable_text("\u{0}\u{7f}\u{9b}")
                .chars()
                .any(char::is_control)
        );
    }
}
