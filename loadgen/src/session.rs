//! One simulated worker: a reconnect loop around WebSocket sessions that speak the protocol
//! exactly like `grid-worker` (hello, welcome, assignments, results, heartbeats, revokes).
//!
//! Each simulated worker is a single task that owns its socket (no writer task, no channels):
//! it `select!`s over the next frame, the next simulated chunk finishing, the heartbeat timer
//! and the stop signal, then writes everything it has to say and flushes once. Its state is a
//! few small queues bounded by its slots, so 10,000 of them fit in one process.
//!
//! Chunks are computed for real with `grid_kernels::run` when they start, then held for the
//! simulated compute time (a timer; no thread is blocked). The kernel runs on the runtime
//! thread: meant for cheap kernels (`echo`); a heavy kernel stalls the other connections of
//! that thread while it runs.
//!
//! Attackers ([`crate::adversary`]) run the same loop: an attack changes what happens to an
//! assignment (computed, released at once, or held), the identity and the slots in the hello,
//! when a session is ended on purpose (after some results, or some time holding leases), and,
//! for sybils, when the first connection is made.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use grid_protocol::backoff::Backoff;
use grid_protocol::{
    LeaseId, MasterMessage, Outcome, PROTOCOL_VERSION, Task, WorkerKind, WorkerMessage, to_json,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, warn};
use url::{Host, Url};

use crate::LoadConfig;
use crate::adversary::{Attack, Handling, Turns, fresh_identity, source_address};
use crate::sabotage::Liar;
use crate::stats::Stats;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a handshake (TCP, WebSocket upgrade, hello and welcome) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay ceiling; doubles up to [`RECONNECT_MAX`].
const RECONNECT_INITIAL: Duration = Duration::from_millis(250);
/// Largest reconnect delay ceiling.
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How long to wait for the master to answer our close frame when the run stops.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every simulated worker of a run shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The run's settings.
    pub config: LoadConfig,
    /// Counters and histograms.
    pub stats: Stats,
    /// Permits for handshakes in flight.
    pub gate: Semaphore,
    /// Set when the master refuses our protocol version: the run stops with this error.
    pub fatal: OnceLock<String>,
    /// The connection order of a sybil run (`None`: everyone connects at once).
    pub turns: Option<Turns>,
    /// The TLS settings of a `wss://` master.
    pub tls: Arc<rustls::ClientConfig>,
}

/// How one session ended.
enum Ended {
    /// The run is stopping.
    Stopped,
    /// No session: connecting, the upgrade or the hello failed.
    ConnectFailed,
    /// A welcomed session was lost.
    Lost,
    /// An attacker ended the session on purpose: reconnect at once.
    Cycled,
    /// The master will never accept us (protocol version): give up.
    Fatal,
}

/// Resolves once the run is stopping (the watch guard is not held across the caller's awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One simulated worker, across reconnects.
#[derive(Debug)]
pub(crate) struct SimulatedWorker {
    shared: Arc<Shared>,
    worker_id: String,
    /// Whether this worker's id has been welcomed already (the report counts identities).
    welcomed_before: bool,
    /// Some for saboteurs.
    liar: Option<Liar>,
    /// Some for saboteurs: its number among them (from 0), for its source address and turn.
    attacker: Option<u32>,
    /// What it does besides lying (saboteurs of an attack run only).
    attack: Option<Attack>,
    /// Slots announced in the hello.
    slots: u32,
    /// The local address its connections come from (`None`: the operating system's choice).
    bind: Option<IpAddr>,
    /// Still to wait for its turn before its first connection (sybil runs).
    awaiting_turn: bool,
    /// Draws the compute-time jitter.
    rng: SmallRng,
    /// When this worker's slots last stopped being all busy, if they have not been since; None
    /// before its first work. At the end: when it lost a busy slot for good.
    short_since: Option<Instant>,
}

impl SimulatedWorker {
    /// Worker `index` of the run, the `ordinal`-th honest one.
    pub(crate) fn honest(shared: Arc<Shared>, index: u32, ordinal: u32) -> Self {
        let config = &shared.config;
        let bind = source_address(&config.bind, ordinal);
        let slots = config.slots;
        SimulatedWorker::new(shared, index, None, bind, slots)
    }

    /// Worker `index` of the run, the `ordinal`-th saboteur: lies, and attacks if the run says
    /// so.
    pub(crate) fn attacker(shared: Arc<Shared>, index: u32, ordinal: u32) -> Self {
        let config = &shared.config;
        let sabotage = config
            .attack
            .map_or(config.sabotage, |attack| attack.lie(config.sabotage));
        let liar = Liar::new(sabotage, config.seed, index);
        let bind = source_address(config.saboteur_bind(), ordinal);
        let slots = config.saboteur_slots();
        let attack = config.attack;
        let mut worker = SimulatedWorker::new(shared, index, Some(liar), bind, slots);
        worker.attacker = Some(ordinal);
        worker.attack = attack;
        worker
    }

    fn new(
        shared: Arc<Shared>,
        index: u32,
        liar: Option<Liar>,
        bind: Option<IpAddr>,
        slots: u32,
    ) -> Self {
        let worker_id = format!("loadgen-{}-{index}", shared.config.seed);
        let rng = SmallRng::seed_from_u64(shared.config.seed ^ (u64::from(index) << 32));
        let awaiting_turn = shared.turns.is_some();
        SimulatedWorker {
            shared,
            worker_id,
            welcomed_before: false,
            liar,
            attacker: None,
            attack: None,
            slots,
            bind,
            awaiting_turn,
            rng,
            short_since: None,
        }
    }

    /// What this worker does with its assignments.
    fn handling(&self) -> Handling {
        self.attack.map_or(Handling::Compute, Attack::handling)
    }

    /// Keep a session open (reconnecting with jittered backoff) until the run stops.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
        loop {
            match self.session(&mut stop).await {
                Ended::Stopped | Ended::Fatal => break,
                Ended::ConnectFailed => {
                    self.shared
                        .stats
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ended::Lost => {
                    self.shared
                        .stats
                        .sessions_lost
                        .fetch_add(1, Ordering::Relaxed);
                    backoff.reset();
                }
                Ended::Cycled => {
                    backoff.reset();
                    continue;
                }
            }
            let delay = backoff.next_delay(rand::random());
            tokio::select! {
                () = stopped(&mut stop) => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        if let Some(since) = self.short_since {
            let stats = &self.shared.stats;
            stats
                .tail_start_us
                .fetch_min(stats.micros(since), Ordering::Relaxed);
        }
    }

    /// Connect, say hello, and serve one session.
    async fn session(&mut self, stop: &mut watch::Receiver<bool>) -> Ended {
        let shared = Arc::clone(&self.shared);
        if self.awaiting_turn
            && let Some(turns) = &shared.turns
        {
            tokio::select! {
                () = stopped(stop) => return Ended::Stopped,
                () = turns.wait(self.attacker) => {}
            }
        }
        if matches!(self.attack, Some(Attack::Rotate { .. })) {
            self.worker_id = fresh_identity();
            self.welcomed_before = false;
        }
        let handshake = async {
            // Hold a permit for the whole handshake: a ramp, not a stampede.
            let _permit = shared.gate.acquire().await.ok()?;
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake())
                .await
                .ok()?
        };
        let done = tokio::select! {
            () = stopped(stop) => return Ended::Stopped,
            done = handshake => done,
        };
        if std::mem::take(&mut self.awaiting_turn)
            && let (Some(turns), Some(ordinal)) = (&shared.turns, self.attacker)
        {
            turns.tried(ordinal);
        }
        let (socket, hello_at, heartbeat) = match done {
            Some(Ok(welcomed)) => welcomed,
            Some(Err(fatal)) => {
                let _ = shared.fatal.set(fatal);
                return Ended::Fatal;
            }
            None => return Ended::ConnectFailed,
        };
        let attacker = self.attacker.is_some();
        shared.stats.on_connected(
            attacker,
            !std::mem::replace(&mut self.welcomed_before, true),
        );
        let slots = self.slots as usize;
        let handling = self.handling();
        let (results_per_session, hold) = match self.attack {
            Some(Attack::Rotate { after }) => (Some(after), None),
            Some(Attack::Drop { hold }) => (None, Some(hold)),
            _ => (None, None),
        };
        let mut active = Active {
            worker: self,
            attacker,
            slots,
            compute: shared.config.compute,
            handling,
            queue: VecDeque::new(),
            running: VecDeque::new(),
            hoard: Vec::new(),
            pending: VecDeque::new(),
            awaiting_first: Some(hello_at),
            out: Vec::new(),
            results_left: results_per_session,
            hold,
            drop_at: None,
            cycle: false,
        };
        let ended = active.serve(socket, heartbeat, stop).await;
        let held = active.queue.len() + active.running.len();
        shared.stats.on_released(held);
        shared.stats.on_disconnected();
        ended
    }

    /// Connect and exchange hello and welcome. `None`: no session this time;
    /// `Some(Err(_))`: the master refuses our protocol version.
    async fn handshake(&self) -> Option<Result<(Socket, Instant, Duration), String>> {
        let config = &self.shared.config;
        let socket_config = WebSocketConfig::default()
            // Assignments are small; the buffer grows if one is not.
            .read_buffer_size(4096)
            // Frames queue until the explicit flush after each wake-up.
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(4 << 20));
        let connected = connect(&config.server, self.bind, socket_config, &self.shared.tls).await;
        let mut socket = match connected {
            Ok(socket) => socket,
            Err(error) => {
                debug!(%error, "connect failed");
                return None;
            }
        };
        let hello = WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            worker_id: self.worker_id.clone(),
            slots: self.slots,
            kind: WorkerKind::Native,
            work: None,
        };
        let hello_at = Instant::now();
        socket.send(Message::text(to_json(&hello))).await.ok()?;
        let mut challenged = false;
        loop {
            let text = match socket.next().await? {
                Ok(Message::Text(text)) => text,
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_) | Message::Binary(_)) | Err(_) => return None,
            };
            return match MasterMessage::from_json(&text) {
                Ok(MasterMessage::Welcome {
                    heartbeat_seconds, ..
                }) => Some(Ok((
                    socket,
                    hello_at,
                    Duration::from_secs(u64::from(heartbeat_seconds.max(1))),
                ))),
                Ok(MasterMessage::Challenge { seed, bits })
                    if !challenged && bits <= grid_protocol::work::MAX_BITS =>
                {
                    // The master asks each session for a proof of work: simulated workers pay
                    // it like real ones (so an attack's cost is what it would be).
                    challenged = true;
                    let worker_id = self.worker_id.clone();
                    let work = tokio::task::spawn_blocking(move || {
                        grid_protocol::work::solve(&seed, &worker_id, bits)
                    })
                    .await
                    .ok()?;
                    let hello = WorkerMessage::Hello {
                        protocol: PROTOCOL_VERSION,
                        worker_id: self.worker_id.clone(),
                        slots: self.slots,
                        kind: WorkerKind::Native,
                        work: Some(work),
                    };
                    socket.send(Message::text(to_json(&hello))).await.ok()?;
                    continue;
                }
                Ok(MasterMessage::Error { code, message })
                    if code == grid_protocol::ERROR_UNSUPPORTED_PROTOCOL =>
                {
                    Some(Err(format!("{code}: {message}")))
                }
                Ok(MasterMessage::Error { code, message }) => {
                    self.shared
                        .stats
                        .master_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(worker = %self.worker_id, %code, %message, "the master refused the hello");
                    None
                }
                Ok(_) | Err(_) => None,
            };
        }
    }
}

/// Open the WebSocket to `url` over a TCP connection from `bind` when given, trying each
/// address the host resolves to (of `bind`'s family) in turn, as
/// `tokio_tungstenite::connect_async` does; `wss://` with `tls`.
async fn connect(
    url: &Url,
    bind: Option<IpAddr>,
    config: WebSocketConfig,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Socket, tungstenite::Error> {
    let host = match url.host() {
        Some(Host::Domain(domain)) => domain.to_owned(),
        Some(Host::Ipv4(address)) => address.to_string(),
        Some(Host::Ipv6(address)) => address.to_string(),
        None => return Err(tungstenite::error::UrlError::NoHostName.into()),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let mut failure = None;
    for address in tokio::net::lookup_host((host.as_str(), port)).await? {
        if bind.is_some_and(|local| local.is_ipv4() != address.is_ipv4()) {
            continue;
        }
        let tcp = match connect_tcp(address, bind).await {
            Ok(tcp) => tcp,
            Err(error) => {
                failure = Some(error);
                continue;
            }
        };
        // Frames are flushed explicitly, once per wake-up: no need for Nagle's delay.
        tcp.set_nodelay(true)?;
        let (socket, _response) = tokio_tungstenite::client_async_tls_with_config(
            url.as_str(),
            tcp,
            Some(config),
            Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
        )
        .await?;
        return Ok(socket);
    }
    Err(failure
        .unwrap_or_else(|| {
            let from = bind
                .map(|local| format!(" from {local}"))
                .unwrap_or_default();
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address to connect to{from}"),
            )
        })
        .into())
}

/// One TCP connection to `address`, from `bind` (any port) when given.
async fn connect_tcp(address: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(local) = bind {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    socket.connect(address).await
}

/// Close `socket` with a close frame and read until the master's answer ends it (bounded).
async fn close(socket: &mut Socket) {
    let close = async {
        socket.close(None).await?;
        // Read until the master's close answer ends the stream.
        while socket.next().await.is_some() {}
        Ok::<(), tungstenite::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

/// An assignment waiting for a slot (the master's prefetch).
#[derive(Debug)]
struct Queued {
    lease: LeaseId,
    task: Task,
    input: serde_json::Value,
}

/// A chunk in a slot: computed already, its result held until `finish`.
#[derive(Debug)]
struct Running {
    lease: LeaseId,
    started: Instant,
    finish: Instant,
    outcome: Outcome,
    lie: bool,
    /// The master revoked it: the slot stays busy (a real kernel cannot be interrupted) but
    /// the result is not sent.
    revoked: bool,
}

/// A welcomed session's state.
struct Active<'a> {
    worker: &'a mut SimulatedWorker,
    /// Whether the worker is a saboteur (which side of the report it counts on).
    attacker: bool,
    slots: usize,
    /// Simulated compute time per chunk (before jitter).
    compute: Duration,
    /// What happens to assignments.
    handling: Handling,
    queue: VecDeque<Queued>,
    /// In finish order.
    running: VecDeque<Running>,
    /// Leases held without computing them ([`Handling::Hold`]).
    hoard: Vec<LeaseId>,
    /// When results were sent that no assignment has answered yet (bounded by the credit).
    pending: VecDeque<Instant>,
    /// When the hello was sent, until the first assignment to compute arrives.
    awaiting_first: Option<Instant>,
    /// Frames to write at the end of this wake-up.
    out: Vec<Message>,
    /// Results to send before ending the session on purpose (rotating attackers).
    results_left: Option<u64>,
    /// How long to hold leases before dropping the connection (dropping attackers).
    hold: Option<Duration>,
    /// When to drop the connection: `hold` after the session's first assignment.
    drop_at: Option<Instant>,
    /// End the session (with a close frame) once this wake-up's frames are written.
    cycle: bool,
}

impl Active<'_> {
    async fn serve(
        &mut self,
        mut socket: Socket,
        heartbeat: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next_finish = self.running.front().map(|running| running.finish);
            tokio::select! {
                biased;
                () = stopped(stop) => {
                    close(&mut socket).await;
                    return Ended::Stopped;
                }
                // Dropping attackers vanish without a close frame, leases and all.
                () = tokio::time::sleep_until(self.drop_at.unwrap_or_else(Instant::now)),
                    if self.drop_at.is_some() => return Ended::Cycled,
                frame = socket.next() => {
                    if let Some(ended) = self.on_frame(frame) {
                        return ended;
                    }
                    // Take whatever else already arrived before writing anything back.
                    while let Some(frame) = socket.next().now_or_never() {
                        if let Some(ended) = self.on_frame(frame) {
                            return ended;
                        }
                    }
                }
                () = tokio::time::sleep_until(next_finish.unwrap_or_else(Instant::now)),
                    if next_finish.is_some() => {}
                _ = ticker.tick() => self.send(&WorkerMessage::Heartbeat),
            }
            self.work(Instant::now());
            if !self.out.is_empty() {
                for frame in self.out.drain(..) {
                    if socket.feed(frame).await.is_err() {
                        return Ended::Lost;
                    }
                }
                if socket.flush().await.is_err() {
                    return Ended::Lost;
                }
            }
            if self.cycle {
                close(&mut socket).await;
                return Ended::Cycled;
            }
        }
    }

    /// Handle what the socket gave. `Some`: the session is over.
    fn on_frame(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Ended> {
        let text = match frame {
            None => return Some(Ended::Lost),
            Some(Err(error)) => {
                debug!(worker = %self.worker.worker_id, %error, "session lost");
                return Some(Ended::Lost);
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                debug!(worker = %self.worker.worker_id, ?frame, "the master closed the session");
                return None;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return None,
            Some(Ok(Message::Binary(_))) => {
                warn!(worker = %self.worker.worker_id, "binary frame from the master");
                return Some(Ended::Lost);
            }
        };
        let message = match MasterMessage::from_json(&text) {
            Ok(message) => message,
            Err(error) => {
                warn!(worker = %self.worker.worker_id, %error, "malformed message from the master");
                return Some(Ended::Lost);
            }
        };
        let stats = &self.worker.shared.stats;
        match message {
            MasterMessage::Assign {
                lease, task, input, ..
            } => {
                let now = Instant::now();
                stats.on_assignment(now, self.attacker);
                match self.handling {
                    Handling::Compute => {
                        if let Some(hello_at) = self.awaiting_first.take() {
                            stats.first_latency.record(now - hello_at);
                        } else if let Some(sent_at) = self.pending.pop_front() {
                            stats.turnaround.record(now - sent_at);
                        }
                        stats.on_queued();
                        self.queue.push_back(Queued { lease, task, input });
                    }
                    Handling::Release => {
                        // Not `self.send`: `stats` borrows the worker.
                        let release = WorkerMessage::Release {
                            leases: vec![lease],
                        };
                        self.out.push(Message::text(to_json(&release)));
                        stats
                            .side(self.attacker)
                            .released
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Handling::Hold => {
                        self.hoard.push(lease);
                        if self.drop_at.is_none() {
                            self.drop_at = self.hold.map(|hold| now + hold);
                        }
                    }
                }
            }
            MasterMessage::Revoke { leases } => {
                for lease in leases {
                    if let Some(index) = self.queue.iter().position(|q| q.lease == lease) {
                        self.queue.remove(index);
                        stats.on_released(1);
                        stats.revoked.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(running) = self
                        .running
                        .iter_mut()
                        .find(|r| r.lease == lease && !r.revoked)
                    {
                        running.revoked = true;
                        stats.revoked.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(index) = self.hoard.iter().position(|&held| held == lease) {
                        self.hoard.swap_remove(index);
                        stats.revoked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            MasterMessage::Rejected { lease, reason } => {
                debug!(worker = %self.worker.worker_id, lease, %reason, "result rejected");
                stats
                    .side(self.attacker)
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
            }
            MasterMessage::Error { code, message } => {
                stats.master_errors.fetch_add(1, Ordering::Relaxed);
                warn!(worker = %self.worker.worker_id, %code, %message, "error from the master");
                return Some(Ended::Lost);
            }
            MasterMessage::Welcome { .. } | MasterMessage::Challenge { .. } => {}
        }
        None
    }

    /// Finish due chunks and fill free slots, until nothing changes.
    fn work(&mut self, now: Instant) {
        loop {
            let mut changed = false;
            while self.running.len() < self.slots {
                let Some(queued) = self.queue.pop_front() else {
                    break;
                };
                self.start(queued);
                changed = true;
            }
            while self
                .running
                .front()
                .is_some_and(|running| running.finish <= now)
            {
                if let Some(done) = self.running.pop_front() {
                    self.finish(done, now);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Track when this worker stopped having every slot busy (the tail). Workers that do not
        // compute have none: they never stop awaiting their first assignment to compute.
        if self.running.len() >= self.slots {
            self.worker.short_since = None;
        } else if self.worker.short_since.is_none() && self.awaiting_first.is_none() {
            self.worker.short_since = Some(now);
        }
    }

    /// Compute a chunk now; its result is due after the simulated compute time.
    fn start(&mut self, queued: Queued) {
        let started = Instant::now();
        let honest = match &queued.task {
            Task::Kernel { name } => match grid_kernels::run(name, &queued.input) {
                Ok(output) => Outcome::Ok(output),
                Err(error) => Outcome::Err(error.to_string()),
            },
            // Simulated workers run built-in kernels only; an honest loadgen worker reports
            // the same error for every module chunk, so such chunks fail rather than linger.
            Task::Module { .. } => Outcome::Err("grid-loadgen does not run task modules".into()),
        };
        let (outcome, lie) = match &mut self.worker.liar {
            Some(liar) => liar.report(&queued.input, honest),
            None => (honest, false),
        };
        let jitter = self.worker.shared.config.compute_jitter;
        let extra = if jitter.is_zero() {
            Duration::ZERO
        } else {
            jitter.mul_f64(self.worker.rng.random_range(0.0..=1.0))
        };
        let finish = Instant::now() + self.compute + extra;
        let at = self
            .running
            .partition_point(|running| running.finish <= finish);
        self.running.insert(
            at,
            Running {
                lease: queued.lease,
                started,
                finish,
                outcome,
                lie,
                revoked: false,
            },
        );
    }

    /// A chunk's time is up: send its result (unless revoked).
    fn finish(&mut self, done: Running, now: Instant) {
        let shared = Arc::clone(&self.worker.shared);
        let stats = &shared.stats;
        stats.on_released(1);
        let finished = done.finish.min(now);
        if done.revoked {
            stats.on_computed(self.attacker, done.started, finished, false, true);
            return;
        }
        self.send(&WorkerMessage::Result {
            lease: done.lease,
            outcome: done.outcome,
        });
        stats.on_computed(self.attacker, done.started, finished, done.lie, false);
        if let Some(left) = &mut self.results_left {
            *left = left.saturating_sub(1);
            self.cycle |= *left == 0;
        }
        // Bounded by the credit the master keeps for us; extra ones can only be stale.
        if self.pending.len() < self.slots * 2 + 1 {
            self.pending.push_back(now);
        }
    }

    fn send(&mut self, message: &WorkerMessage) {
        self.out.push(Message::text(to_json(message)));
    }
}
