//! One worker's WebSocket session at `/ws`: the hello handshake, then a reader that validates
//! and forwards messages to the scheduler, and a writer that sends what the scheduler queues.
//!
//! Hostile or broken peers get a protocol `error` message and a close frame — never a panic:
//! malformed JSON, unknown message types, oversized frames, a second hello, a flood of
//! messages, or silence longer than three heartbeat intervals all end the session cleanly.
//! Ending a session (for any reason) hands its leases back to the scheduler at once.
//!
//! Bounded (issue 19): the scheduler's messages to a session go through an [`Outbox`] of
//! `ws_outbox_messages` (1,024) places that the scheduler fills without ever waiting; a full
//! outbox means the peer does not read, and the session ends (`slow_reader`). Each frame must
//! be written within `ws_write_timeout` (10 s) or the session ends. A session answered
//! `rejected` more than `ws_max_refusals` (64) times for leases it does not hold ends
//! (`too_many_refusals`). Ping and pong frames count against the message rate like messages.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::{SinkExt, StreamExt};
use grid_protocol::{
    MAX_SLOTS, MasterMessage, Outcome, PROTOCOL_VERSION, WorkerKind, WorkerMessage,
    is_valid_worker_id, outcome_digest,
};
use tokio::sync::{Notify, mpsc, watch};

use crate::AppState;
use crate::limits::Limits;
use crate::scheduler::{Event, Outbound, SessionId};

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker may take to answer the hello's proof-of-work challenge. At the largest
/// setting (32 bits) an honest worker needs minutes; the README advises 16 to 22 bits
/// (a fraction of a second to a few seconds).
const WORK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an ending session waits for the peer's answer to its close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why the master ends a session: sent as an `error` message, then as the close frame.
#[derive(Debug, Clone)]
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

/// The scheduler's way to a session's writer: a bounded queue the scheduler fills without
/// waiting. When it is full (the peer does not read), or the session has earned too many
/// refusals, the session is told to end.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Outbound>,
    end: Arc<EndSignal>,
}

/// The queue was full or closed: the message was not queued (the session is ending).
#[derive(Debug)]
pub struct NotQueued;

#[derive(Debug)]
struct EndSignal {
    /// Why the session must end, set once.
    refusal: OnceLock<Refusal>,
    notify: Notify,
    refusals: AtomicU32,
    max_refusals: u32,
}

impl EndSignal {
    fn end(&self, refusal: Refusal) {
        if self.refusal.set(refusal).is_ok() {
            self.notify.notify_one();
        }
    }

    /// Resolves once the session must end, with why.
    async fn ended(&self) -> Refusal {
        loop {
            if let Some(refusal) = self.refusal.get() {
                return refusal.clone();
            }
            self.notify.notified().await;
        }
    }
}

impl Outbox {
    fn new(capacity: usize, max_refusals: u32) -> (Outbox, mpsc::Receiver<Outbound>) {
        let (queue, outgoing) = mpsc::channel(capacity.max(1));
        let end = Arc::new(EndSignal {
            refusal: OnceLock::new(),
            notify: Notify::new(),
            refusals: AtomicU32::new(0),
            max_refusals,
        });
        (Outbox { queue, end }, outgoing)
    }

    /// Queue a message without waiting. A full queue ends the session (`slow_reader`).
    pub fn send(&self, message: Outbound) -> Result<(), NotQueued> {
        match self.queue.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.end.end(Refusal::new(
                    "slow_reader",
                    "the worker does not read its messages",
                    close_code::POLICY,
                ));
                Err(NotQueued)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NotQueued),
        }
    }

    /// Queue a refusal of a lease the session does not hold: counted, and past the limit the
    /// session ends (`too_many_refusals`) instead.
    pub fn refuse(&self, message: MasterMessage) {
        let refusals = self
            .end
            .refusals
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if refusals > self.end.max_refusals {
            self.end.end(Refusal::new(
                "too_many_refusals",
                format!(
                    "more than {} results for leases this session does not hold",
                    self.end.max_refusals
                ),
                close_code::POLICY,
            ));
            return;
        }
        let _ = self.send(Outbound::Message(message));
    }
}

/// What the reader hands the writer at the end: an `error` message (sent before the close
/// frame), the close frame, and whether the queued messages are sent first.
#[derive(Debug)]
struct Goodbye {
    error: Option<MasterMessage>,
    frame: CloseFrame,
    flush: bool,
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

/// Serve one upgraded connection until it ends. `permit` is the session's place
/// ([`crate::admission`]), given back when the session ends.
pub async fn run(
    socket: WebSocket,
    state: AppState,
    peer: Peer,
    shutdown: watch::Receiver<bool>,
    permit: crate::admission::SessionPermit,
) {
    let _permit = permit;
    let (mut sink, mut stream) = socket.split();
    let limits = state.limits.clone();
    let (outbox, mut outgoing) = Outbox::new(limits.ws_outbox_messages, limits.ws_max_refusals);
    let (close_tx, mut close_rx) = mpsc::channel::<Goodbye>(1);
    let write_timeout = limits.ws_write_timeout;
    let end = outbox.end.clone();

    // The writer: everything the master sends goes through here, so frames never interleave.
    // Every frame must be written within the write timeout, or the session ends.
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                goodbye = close_rx.recv() => {
                    let Some(goodbye) = goodbye else { return false };
                    // Flush what the scheduler queued before the refusal (unless the peer does
                    // not read), then say why and close; all of it within one write timeout.
                    let farewell = async {
                        if goodbye.flush {
                            while let Ok(Outbound::Message(message)) = outgoing.try_recv() {
                                let text = grid_protocol::to_json(&message).into();
                                if !write_frame(&mut sink, Message::Text(text), write_timeout, &end)
                                    .await
                                {
                                    return false;
                                }
                            }
                        }
                        if let Some(error) = goodbye.error {
                            let text = grid_protocol::to_json(&error).into();
                            if !write_frame(&mut sink, Message::Text(text), write_timeout, &end).await
                            {
                                return false;
                            }
                        }
                        let close = Message::Close(Some(goodbye.frame));
                        let sent = write_frame(&mut sink, close, write_timeout, &end).await;
                        if sent {
                            let _ = sink.close().await;
                        }
                        sent
                    };
                    return tokio::time::timeout(write_timeout, farewell).await.unwrap_or(false);
                }
                message = outgoing.recv() => {
                    let Some(Outbound::Message(message)) = message else {
                        let _ = tokio::time::timeout(write_timeout, sink.close()).await;
                        return false;
                    };
                    let text = grid_protocol::to_json(&message);
                    if !write_frame(&mut sink, Message::Text(text.into()), write_timeout, &end).await {
                        return false;
                    }
                }
            }
        }
    });

    let session = state.scheduler.new_session_id();
    let result = read_loop(&mut stream, &state, session, &peer, &outbox, shutdown).await;
    let registered = !matches!(result, ReadEnd::BeforeHello(_));
    let goodbye = match result {
        ReadEnd::PeerClosed => Goodbye {
            error: None,
            frame: CloseFrame {
                code: close_code::NORMAL,
                reason: Utf8Bytes::from_static("bye"),
            },
            flush: true,
        },
        ReadEnd::Refused(refusal) | ReadEnd::BeforeHello(refusal) => {
            tracing::debug!(session, code = refusal.code, message = %refusal.message, "closing session");
            Goodbye {
                flush: refusal.code != "slow_reader",
                error: Some(MasterMessage::Error {
                    code: refusal.code.into(),
                    message: refusal.message.clone(),
                }),
                frame: CloseFrame {
                    code: refusal.close_code,
                    reason: Utf8Bytes::from(truncate(&refusal.message, 120)),
                },
            }
        }
    };
    if registered {
        // Hand the session's leases back before anything else can happen to them.
        state.scheduler.send(Event::Disconnected { session }).await;
    }
    metrics::counter!("grid_sessions_closed_total", "reason" => match &goodbye.error {
        Some(MasterMessage::Error { code, .. }) => code.clone(),
        _ => "peer".to_owned(),
    })
    .increment(1);
    let _ = close_tx.send(goodbye).await;
    drop(outbox);
    // The writer's goodbye takes at most one write timeout; past that the socket is dropped.
    let said_goodbye = tokio::time::timeout(write_timeout + Duration::from_secs(1), writer).await;
    if !matches!(said_goodbye, Ok(Ok(true))) {
        return;
    }
    // The closing handshake: read (and drop) what the peer still sends until it answers the
    // close frame or hangs up, for a moment. Closing a socket with unread data resets it, and a
    // peer still sending would lose the error and the close frame.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

/// Write one frame within `timeout`; false if the session must end (a stalled write marks it
/// `slow_reader`).
async fn write_frame(sink: &mut Sink, frame: Message, timeout: Duration, end: &EndSignal) -> bool {
    match tokio::time::timeout(timeout, sink.send(frame)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            end.end(Refusal::new(
                "slow_reader",
                format!("the worker does not read its messages (a write stalled for {timeout:?})"),
                close_code::POLICY,
            ));
            false
        }
    }
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

/// A validated hello.
struct Hello {
    worker_id: Arc<str>,
    kind: WorkerKind,
    slots: u32,
    work: Option<u64>,
}

/// One text frame of the handshake, within `timeout`.
async fn read_handshake_frame(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    rate: &mut RateLimit,
    limits: &Limits,
    timeout: Duration,
) -> Result<String, ReadEnd> {
    match tokio::time::timeout(timeout, next_text(stream, rate, limits)).await {
        Err(_) => Err(ReadEnd::BeforeHello(Refusal::new(
            "hello_timeout",
            format!("no hello within {} seconds", timeout.as_secs()),
            close_code::POLICY,
        ))),
        Ok(Next::Closed) => Err(ReadEnd::PeerClosed),
        Ok(Next::Refused(refusal)) => Err(ReadEnd::BeforeHello(refusal)),
        Ok(Next::Text(text)) => Ok(text),
    }
}

/// Parse and check a hello frame.
fn parse_hello(text: &str) -> Result<Hello, Refusal> {
    match WorkerMessage::from_json(text) {
        Ok(WorkerMessage::Hello {
            protocol,
            worker_id,
            slots,
            kind,
            work,
        }) => {
            if protocol != PROTOCOL_VERSION {
                return Err(Refusal::new(
                    grid_protocol::ERROR_UNSUPPORTED_PROTOCOL,
                    format!(
                        "this master speaks protocol {PROTOCOL_VERSION}, not {protocol}: upgrade the worker"
                    ),
                    close_code::PROTOCOL,
                ));
            }
            if !is_valid_worker_id(&worker_id) {
                return Err(Refusal::protocol(
                    "worker_id must be 1 to 128 characters of [A-Za-z0-9._:-]",
                ));
            }
            if slots == 0 || slots > MAX_SLOTS {
                return Err(Refusal::protocol(format!(
                    "slots must be between 1 and {MAX_SLOTS}"
                )));
            }
            Ok(Hello {
                worker_id: Arc::from(worker_id),
                kind,
                slots,
                work,
            })
        }
        Ok(_) => Err(Refusal::protocol("the first message must be hello")),
        Err(error) => Err(Refusal::protocol(format!("malformed hello: {error}"))),
    }
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    state: &AppState,
    session: SessionId,
    peer: &Peer,
    outbox: &Outbox,
    mut shutdown: watch::Receiver<bool>,
) -> ReadEnd {
    let limits = &state.limits;
    let mut rate = RateLimit::new(limits.ws_messages_per_second, limits.ws_message_burst);

    // Hello first.
    let hello = match read_handshake_frame(stream, &mut rate, limits, HELLO_TIMEOUT).await {
        Ok(text) => text,
        Err(end) => return end,
    };
    let mut hello = match parse_hello(&hello) {
        Ok(hello) => hello,
        Err(refusal) => return ReadEnd::BeforeHello(refusal),
    };
    // A proof of work, when the master asks for one, from sessions outside the trusted
    // networks: a fresh seed per connection, answered by a second hello.
    let bits = limits.hello_work_bits.min(grid_protocol::work::MAX_BITS);
    if bits > 0 && peer.network.is_some() {
        let seed = hex::encode(rand::random::<[u8; 16]>());
        let _ = outbox.send(Outbound::Message(MasterMessage::Challenge {
            seed: seed.clone(),
            bits,
        }));
        let answer = match read_handshake_frame(stream, &mut rate, limits, WORK_TIMEOUT).await {
            Ok(text) => text,
            Err(end) => return end,
        };
        hello = match parse_hello(&answer) {
            Ok(hello) => hello,
            Err(refusal) => return ReadEnd::BeforeHello(refusal),
        };
        let solved = hello.work.is_some_and(|work| {
            grid_protocol::work::is_solution(&seed, &hello.worker_id, bits, work)
        });
        if !solved {
            metrics::counter!("grid_hello_work_refused_total").increment(1);
            return ReadEnd::BeforeHello(Refusal::new(
                "bad_work",
                format!("the hello's work does not solve the challenge ({bits} bits)"),
                close_code::POLICY,
            ));
        }
    }
    let Hello {
        worker_id,
        kind,
        slots,
        ..
    } = hello;
    let _ = outbox.send(Outbound::Message(MasterMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        heartbeat_seconds: limits.heartbeat_seconds,
        max_message_bytes: u32::try_from(limits.max_ws_message_bytes).unwrap_or(u32::MAX),
        masters: state.masters.others(),
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
    // Debug, and a fingerprint for the identity: it is a bearer secret (L3), and a reconnect
    // storm must not fill the logs (L4).
    tracing::debug!(
        session,
        worker = %crate::auth::fingerprint(&worker_id),
        ?kind,
        slots,
        "worker connected"
    );

    let idle_limit = Duration::from_secs(u64::from(limits.heartbeat_seconds) * 3);
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle_limit, next_text(stream, &mut rate, limits)) => next,
            refusal = outbox.end.ended() => return ReadEnd::Refused(refusal),
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

/// The next text frame, answering pings along the way. Every frame (pings and pongs too, which
/// cost an answer) takes a token of the message rate.
async fn next_text(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    rate: &mut RateLimit,
    limits: &Limits,
) -> Next {
    loop {
        let frame = stream.next().await;
        if matches!(
            frame,
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))
        ) && !rate.allow()
        {
            return Next::Refused(Refusal::new(
                "rate_limited",
                format!(
                    "more than {} messages per second",
                    limits.ws_messages_per_second
                ),
                close_code::POLICY,
            ));
        }
        match frame {
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
