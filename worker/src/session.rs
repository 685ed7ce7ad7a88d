//! One WebSocket session with a master: connect, hello, welcome, then assignments in and
//! results out until the connection ends or a graceful shutdown has drained it.
//!
//! The socket is split (as in the axum/tokio-tungstenite WebSocket examples): a writer task
//! owns the sink and is fed through an mpsc channel; the session loop owns the stream and
//! `select!`s over it, finished chunks, finished module fetches, free compute slots, the
//! heartbeat timer and the shutdown signal. When the loop ends, the writer goes with it.
//!
//! An assignment's way through the session:
//! - a kernel task is queued at once; a module task too when its module is compiled already,
//!   otherwise it waits (`awaiting`) while a task of its own gets the module from the
//!   [`ModuleCache`] (assignments of one new module share one download), so heartbeats and
//!   other chunks go on meanwhile;
//! - a module that cannot be fetched is not an outcome (another worker may well get it): the
//!   lease goes back to the master with `Release`;
//! - queued assignments start on the blocking pool, in order, as compute slots free up and,
//!   for a module chunk, once its `max_memory_mb` fits in what is left of the worker's
//!   `--max-memory` budget (until then it waits in the queue); a chunk whose cap is larger
//!   than the whole budget is handed back like one whose module cannot be had.
//!
//! What happens to work when a session ends:
//! - connection lost: queued and waiting assignments are dropped and results of chunks still
//!   running are discarded (the master reissues a vanished worker's leases at once);
//! - graceful shutdown: `Drain`, `Release` of everything queued or waiting, running chunks
//!   finish and their results are sent, then a normal close.
//!
//! Reconnecting, failover and backoff are [`crate::run`]'s business, not this module's.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use grid_protocol::{
    LeaseId, MasterMessage, Outcome, PROTOCOL_VERSION, Task, WorkerKind, WorkerMessage, to_json,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{self, JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};
use url::{Host, Url};

use crate::compute::{self, ComputeSlots, Program, Slot};
use crate::masters::Named;
use crate::module_cache::ModuleCache;
use crate::sandbox::{ChunkLimits, TaskModule};
use crate::shutdown::Shutdown;
use crate::{ModuleError, WorkerConfig, WorkerError};

/// Error codes with which a master refuses a hello because of its protocol version. Such a
/// refusal is final: reconnecting would be refused again.
pub const VERSION_MISMATCH_CODES: &[&str] = &[grid_protocol::ERROR_UNSUPPORTED_PROTOCOL];

/// The master closes a session after this many silent heartbeat intervals; the worker gives
/// up on a master it has not heard from (not even a pong) for as long.
const SILENT_INTERVALS: u32 = 3;

/// How long a module that could not be fetched keeps its lease before it goes back. The
/// master may hand a released lease straight back to this worker; the pause keeps a master
/// that cannot serve a module from spinning through assign, download and release.
const RELEASE_DELAY: Duration = Duration::from_secs(2);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a session ended, when the worker can go on.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// Shutdown was requested: the session drained (or there was none). [`crate::run`] returns.
    Shutdown,
    /// The connection failed or was lost; [`crate::run`] backs off and reconnects.
    Lost {
        /// Whether the master had welcomed this session (then the backoff starts over).
        welcomed: bool,
        /// What went wrong.
        reason: WorkerError,
    },
}

/// What the welcome told us.
#[derive(Debug, Clone)]
struct Welcome {
    /// How often to send a heartbeat.
    heartbeat: Duration,
    /// Largest result frame the master accepts (`None`: no limit given).
    max_message_bytes: Option<usize>,
    /// The other live masters (WebSocket URLs).
    masters: Vec<String>,
}

/// Run one session against `url`. Returns `Err` only for fatal errors (see
/// [`WorkerError::is_fatal`]); everything else is a [`SessionEnd`].
pub(crate) async fn run<F: Future<Output = ()>>(
    url: &Url,
    config: &WorkerConfig,
    slots: &ComputeSlots,
    modules: &ModuleCache,
    tls: &Arc<rustls::ClientConfig>,
    named: &Named,
    shutdown: &mut Shutdown<'_, F>,
) -> Result<SessionEnd, WorkerError> {
    let lost = |welcomed, reason: WorkerError| {
        if reason.is_fatal() {
            Err(reason)
        } else {
            Ok(SessionEnd::Lost { welcomed, reason })
        }
    };

    let connect = tokio::time::timeout(config.connect_timeout, connect(url, config.bind, tls));
    let mut socket = tokio::select! {
        () = shutdown.wait() => return Ok(SessionEnd::Shutdown),
        connected = connect => match connected {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => return lost(false, error.into()),
            Err(_elapsed) => return lost(false, WorkerError::Timeout("connecting to the master")),
        },
    };
    debug!("connected, saying hello");

    let welcome = match handshake(&mut socket, config, shutdown).await {
        Ok(Some(welcome)) => welcome,
        Ok(None) => return Ok(SessionEnd::Shutdown),
        Err(reason) => return lost(false, reason),
    };
    info!(
        heartbeat_seconds = welcome.heartbeat.as_secs(),
        slots = config.threads,
        "welcomed by the master"
    );
    named.set(welcome.masters.clone());

    let (sink, stream) = socket.split();
    let (out, outbox) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(sink, outbox));
    let active = Active {
        config,
        master: url,
        slots,
        modules,
        out,
        queue: VecDeque::new(),
        awaiting: HashMap::new(),
        fetches: JoinSet::new(),
        running: HashMap::new(),
        tasks: JoinSet::new(),
        max_message_bytes: welcome.max_message_bytes,
        draining: false,
    };
    let end = active.serve(stream, writer, welcome, shutdown).await;
    if let SessionEnd::Lost { reason, .. } = end {
        return lost(true, reason);
    }
    Ok(end)
}

/// Open the WebSocket to `url`, as `tokio_tungstenite::connect_async` does (TCP to each
/// address the host resolves to in turn, TLS for `wss://`, the upgrade), except that the TCP
/// connection comes from `bind` when given (addresses of the other family are skipped then),
/// and `wss://` trusts the certificate authorities of `tls` (see `--ca-cert`).
async fn connect(
    url: &Url,
    bind: Option<IpAddr>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Socket, tungstenite::Error> {
    let host = match url.host() {
        Some(Host::Domain(domain)) => domain.to_owned(),
        Some(Host::Ipv4(address)) => address.to_string(),
        Some(Host::Ipv6(address)) => address.to_string(),
        None => return Err(tungstenite::error::UrlError::NoHostName.into()),
    };
    let port = url
        .port_or_known_default()
        .ok_or(tungstenite::error::UrlError::UnsupportedUrlScheme)?;
    let mut failure = None;
    let mut tcp = None;
    for address in tokio::net::lookup_host((host.as_str(), port)).await? {
        if bind.is_some_and(|local| local.is_ipv4() != address.is_ipv4()) {
            continue;
        }
        match connect_tcp(address, bind).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(error) => failure = Some(error),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        failure.unwrap_or_else(|| {
            let from = bind
                .map(|local| format!(" from {local}"))
                .unwrap_or_default();
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address to connect to{from}"),
            )
        })
    })?;
    let (socket, _response) = tokio_tungstenite::client_async_tls_with_config(
        url.as_str(),
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
    )
    .await?;
    Ok(socket)
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

/// Send the hello and wait for the welcome. `Ok(None)`: shutdown was requested meanwhile.
async fn handshake<F: Future<Output = ()>>(
    socket: &mut Socket,
    config: &WorkerConfig,
    shutdown: &mut Shutdown<'_, F>,
) -> Result<Option<Welcome>, WorkerError> {
    let hello = WorkerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        worker_id: config.worker_id.clone(),
        slots: config.threads,
        kind: WorkerKind::Native,
        work: None,
    };
    socket.send(Message::text(to_json(&hello))).await?;

    let mut deadline = Instant::now() + config.welcome_timeout;
    let mut challenged = false;
    loop {
        let frame = tokio::select! {
            () = shutdown.wait() => {
                let close = socket.close(Some(close_frame(CloseCode::Normal, "worker shutting down")));
                // Best effort: we are leaving either way.
                let _ = tokio::time::timeout(config.close_timeout, close).await;
                return Ok(None);
            }
            frame = tokio::time::timeout_at(deadline, socket.next()) => frame,
        };
        let text = match frame {
            Err(_elapsed) => return Err(WorkerError::Timeout("waiting for the welcome")),
            Ok(None) => return Err(WorkerError::Closed),
            Ok(Some(Err(error))) => return Err(error.into()),
            Ok(Some(Ok(Message::Text(text)))) => text,
            // tungstenite answers pings by itself.
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(Message::Close(frame)))) => {
                debug!(?frame, "master closed before welcoming");
                return Err(WorkerError::Closed);
            }
            Ok(Some(Ok(Message::Binary(_)))) => {
                return Err(WorkerError::Malformed("binary frame".into()));
            }
        };
        let message = MasterMessage::from_json(&text)
            .map_err(|error| WorkerError::Malformed(error.to_string()))?;
        return match message {
            MasterMessage::Welcome {
                protocol,
                heartbeat_seconds,
                max_message_bytes,
                masters,
            } => {
                if protocol != PROTOCOL_VERSION {
                    return Err(WorkerError::ProtocolMismatch {
                        ours: PROTOCOL_VERSION,
                        message: format!("the master welcomed us with protocol {protocol}"),
                    });
                }
                Ok(Some(Welcome {
                    heartbeat: Duration::from_secs(u64::from(heartbeat_seconds.max(1))),
                    max_message_bytes: usize::try_from(max_message_bytes)
                        .ok()
                        .filter(|&limit| limit > 0),
                    masters,
                }))
            }
            MasterMessage::Error { code, message } if VERSION_MISMATCH_CODES.contains(&&*code) => {
                Err(WorkerError::ProtocolMismatch {
                    ours: PROTOCOL_VERSION,
                    message: format!("{code}: {message}"),
                })
            }
            MasterMessage::Challenge { seed, bits } if !challenged => {
                // The master asks for a proof of work (`--hello-work-bits`): solve it off the
                // runtime's threads, then say hello again with the answer.
                challenged = true;
                if bits > grid_protocol::work::MAX_BITS {
                    return Err(WorkerError::Malformed(format!(
                        "a challenge of {bits} bits (at most {} are allowed)",
                        grid_protocol::work::MAX_BITS
                    )));
                }
                let worker_id = config.worker_id.clone();
                let started = Instant::now();
                let work = tokio::task::spawn_blocking(move || {
                    grid_protocol::work::solve(&seed, &worker_id, bits)
                })
                .await
                .map_err(|error| WorkerError::Malformed(format!("proof of work: {error}")))?;
                debug!(bits, elapsed = ?started.elapsed(), "solved the master's challenge");
                let hello = WorkerMessage::Hello {
                    protocol: PROTOCOL_VERSION,
                    worker_id: config.worker_id.clone(),
                    slots: config.threads,
                    kind: WorkerKind::Native,
                    work: Some(work),
                };
                socket.send(Message::text(to_json(&hello))).await?;
                deadline = Instant::now() + config.welcome_timeout;
                continue;
            }
            MasterMessage::Error { code, message } => Err(WorkerError::Refused { code, message }),
            other => Err(WorkerError::Malformed(format!(
                "expected a welcome, got {}",
                kind_of(&other)
            ))),
        };
    }
}

/// An assignment waiting for a compute slot.
#[derive(Debug)]
struct Assignment {
    /// The master's lease.
    lease: LeaseId,
    /// What to run.
    program: Program,
    /// The chunk.
    input: serde_json::Value,
}

/// A module assignment waiting for its module.
#[derive(Debug)]
struct AwaitingModule {
    /// The master's lease.
    lease: LeaseId,
    /// The module's id, for logs.
    module: String,
    /// The job's per-chunk limits.
    limits: ChunkLimits,
    /// The chunk.
    input: serde_json::Value,
}

/// An assignment being computed on a blocking thread.
#[derive(Debug)]
struct Running {
    /// The master's lease.
    lease: LeaseId,
    /// The master revoked the lease: discard the result instead of sending it.
    revoked: bool,
}

/// A welcomed session's state.
#[derive(Debug)]
struct Active<'a> {
    /// Timeouts and identity.
    config: &'a WorkerConfig,
    /// The master's WebSocket URL; its HTTP side serves the modules.
    master: &'a Url,
    /// The worker-wide compute slots.
    slots: &'a ComputeSlots,
    /// The worker-wide compiled modules.
    modules: &'a ModuleCache,
    /// Frames for the writer task.
    out: mpsc::UnboundedSender<Message>,
    /// Assignments waiting for a slot, in arrival order (the master's prefetch).
    queue: VecDeque<Assignment>,
    /// Module assignments waiting for their module, by the task fetching it.
    awaiting: HashMap<task::Id, AwaitingModule>,
    /// The tasks getting modules from the cache, one per awaiting assignment.
    fetches: JoinSet<Result<Arc<TaskModule>, ModuleError>>,
    /// Chunks computing, by their blocking task.
    running: HashMap<task::Id, Running>,
    /// The blocking tasks computing chunks.
    tasks: JoinSet<Outcome>,
    /// The welcome's result size limit.
    max_message_bytes: Option<usize>,
    /// A graceful shutdown has begun: nothing new is started.
    draining: bool,
}

impl Active<'_> {
    /// The session loop. Ends with [`SessionEnd::Shutdown`] after a drain (or a connection lost
    /// during one), else [`SessionEnd::Lost`].
    async fn serve<F: Future<Output = ()>>(
        mut self,
        mut stream: SplitStream<Socket>,
        mut writer: JoinHandle<Result<(), tungstenite::Error>>,
        welcome: Welcome,
        shutdown: &mut Shutdown<'_, F>,
    ) -> SessionEnd {
        let period = welcome.heartbeat;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();

        let ended: Result<(), WorkerError> = loop {
            let needs = self.next_needs();
            tokio::select! {
                () = shutdown.wait(), if !self.draining => self.begin_drain(),
                frame = stream.next() => match frame {
                    None => break Err(WorkerError::Closed),
                    Some(Err(error)) => break Err(error.into()),
                    Some(Ok(message)) => {
                        last_heard = Instant::now();
                        if let Err(error) = self.on_frame(message) {
                            break Err(error);
                        }
                    }
                },
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_finished(joined);
                }
                Some(fetched) = self.fetches.join_next_with_id(), if !self.fetches.is_empty() => {
                    self.on_fetched(fetched);
                }
                Some(slot) = self.slots.take(needs), if !self.queue.is_empty() => {
                    self.start_next(slot);
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > period * SILENT_INTERVALS {
                        break Err(WorkerError::Timeout("the master went silent"));
                    }
                    self.send(&WorkerMessage::Heartbeat);
                    // Any frame back (pongs included) shows the master is still there.
                    let _ = self.out.send(Message::Ping(Default::default()));
                }
                written = &mut writer => break Err(match written {
                    Ok(Ok(())) => WorkerError::Closed,
                    Ok(Err(error)) => error.into(),
                    Err(join) => {
                        warn!(error = %join, "the writer task failed");
                        WorkerError::Closed
                    }
                }),
            }
            if self.draining && self.tasks.is_empty() {
                break Ok(());
            }
        };

        match ended {
            Ok(()) => {
                info!("drained; closing the session");
                let _ = self.out.send(Message::Close(Some(close_frame(
                    CloseCode::Normal,
                    "worker shutting down",
                ))));
                // Read until the master answers our close; that completes the handshake.
                let closing = async {
                    while let Some(Ok(frame)) = stream.next().await {
                        if let Message::Close(_) = frame {
                            break;
                        }
                    }
                };
                if tokio::time::timeout(self.config.close_timeout, closing)
                    .await
                    .is_err()
                {
                    debug!("the master did not answer the close in time");
                }
                writer.abort();
                SessionEnd::Shutdown
            }
            Err(reason) => {
                if let WorkerError::Malformed(_) = reason {
                    // Tell the master why before hanging up; bounded, it may be the problem.
                    let _ = self.out.send(Message::Close(Some(close_frame(
                        CloseCode::Protocol,
                        "malformed message",
                    ))));
                    let _ = tokio::time::timeout(self.config.close_timeout, &mut writer).await;
                }
                writer.abort();
                let lost_running = self.running.values().filter(|r| !r.revoked).count();
                let queued = self.queue.len() + self.awaiting.len();
                if lost_running > 0 || queued > 0 {
                    info!(
                        running = lost_running,
                        queued, "session lost; dropping its work (the master reissues it)"
                    );
                }
                if self.draining {
                    warn!(error = %reason, "connection lost while draining");
                    SessionEnd::Shutdown
                } else {
                    SessionEnd::Lost {
                        welcomed: true,
                        reason,
                    }
                }
            }
        }
        // Dropping `self.tasks` detaches chunks still computing: they finish on their own
        // and give their compute slot back, their results unsent. Dropping `self.fetches`
        // cancels module downloads; a later assignment starts them afresh.
    }

    /// Handle one frame from the master. `Err` ends the session.
    fn on_frame(&mut self, frame: Message) -> Result<(), WorkerError> {
        match frame {
            Message::Text(text) => {
                let message = MasterMessage::from_json(&text)
                    .map_err(|error| WorkerError::Malformed(error.to_string()))?;
                self.on_message(message)
            }
            Message::Binary(_) => Err(WorkerError::Malformed("binary frame".into())),
            // tungstenite answers pings itself; pongs only prove the master is alive.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
            Message::Close(frame) => {
                // tungstenite queues the reply; the stream ends on the next read.
                debug!(?frame, "master closed the connection");
                Ok(())
            }
        }
    }

    /// Handle one protocol message. `Err` ends the session.
    fn on_message(&mut self, message: MasterMessage) -> Result<(), WorkerError> {
        match message {
            MasterMessage::Assign {
                lease, task, input, ..
            } => {
                if self.holds(lease) {
                    warn!(lease, "ignoring a second assignment of a lease we hold");
                } else if self.draining {
                    // Crossed our drain on the wire: give it straight back.
                    self.send(&WorkerMessage::Release {
                        leases: vec![lease],
                    });
                } else {
                    debug!(lease, ?task, "assigned");
                    self.accept(lease, task, input);
                }
            }
            MasterMessage::Revoke { leases } => self.revoke(&leases),
            MasterMessage::Rejected { lease, reason } => {
                info!(lease, %reason, "the master rejected a result");
            }
            MasterMessage::Error { code, message } => {
                return Err(WorkerError::MasterError { code, message });
            }
            MasterMessage::Welcome { .. } => warn!("ignoring a second welcome"),
            MasterMessage::Challenge { .. } => warn!("ignoring a challenge after the welcome"),
        }
        Ok(())
    }

    /// Queue an assignment, or first get its module.
    fn accept(&mut self, lease: LeaseId, task: Task, input: serde_json::Value) {
        let (id, limits) = match task {
            Task::Kernel { name } => return self.enqueue(lease, Program::Kernel(name), input),
            Task::Module {
                id,
                timeout_ms,
                max_memory_mb,
                output,
            } => (
                id,
                ChunkLimits::new(timeout_ms, max_memory_mb).with_output(output),
            ),
        };
        if !self.slots.fits(limits.memory.mb) {
            // It could never start here: handed back like a module that cannot be had, after
            // the same pause.
            let over = ModuleError::OverBudget {
                needed_mb: limits.memory.mb,
                budget_mb: self.slots.budget_mb(),
            };
            let fetch = self.fetches.spawn(async move {
                tokio::time::sleep(RELEASE_DELAY).await;
                Err(over)
            });
            self.awaiting.insert(
                fetch.id(),
                AwaitingModule {
                    lease,
                    module: id,
                    limits,
                    input,
                },
            );
            return;
        }
        if let Some(module) = self.modules.cached(&id) {
            return self.enqueue(lease, Program::Module { module, limits }, input);
        }
        let (modules, master, fetching) = (self.modules.clone(), self.master.clone(), id.clone());
        let fetch = self.fetches.spawn(async move {
            let fetched = modules.get(&master, &fetching).await;
            if fetched.is_err() {
                tokio::time::sleep(RELEASE_DELAY).await;
            }
            fetched
        });
        self.awaiting.insert(
            fetch.id(),
            AwaitingModule {
                lease,
                module: id,
                limits,
                input,
            },
        );
    }

    /// A module fetch ended: queue its assignment, or hand the lease back if there is no
    /// module. Nothing to do if the lease was revoked or released meanwhile.
    fn on_fetched(
        &mut self,
        joined: Result<(task::Id, Result<Arc<TaskModule>, ModuleError>), JoinError>,
    ) {
        let (id, fetched) = match joined {
            Ok((id, fetched)) => {
                let over_budget = matches!(fetched, Err(ModuleError::OverBudget { .. }));
                (
                    id,
                    fetched.map_err(|error| (error.to_string(), over_budget)),
                )
            }
            Err(error) => (
                error.id(),
                Err((format!("the fetch task failed: {error}"), false)),
            ),
        };
        let Some(AwaitingModule {
            lease,
            module,
            limits,
            input,
        }) = self.awaiting.remove(&id)
        else {
            return;
        };
        match fetched {
            Ok(compiled) => {
                let program = Program::Module {
                    module: compiled,
                    limits,
                };
                self.enqueue(lease, program, input);
            }
            Err((error, over_budget)) => {
                if !over_budget {
                    warn!(lease, %module, %error, "cannot get the task module; handing the lease back");
                } else if self.slots.first_over_budget(&module) {
                    warn!(lease, %module, %error, "the module's chunks do not fit this worker's memory budget; handing them back");
                } else {
                    debug!(lease, %module, %error, "over the memory budget; handing the lease back");
                }
                self.send(&WorkerMessage::Release {
                    leases: vec![lease],
                });
            }
        }
    }

    /// Queue an assignment that is ready to run and start what the free slots allow.
    fn enqueue(&mut self, lease: LeaseId, program: Program, input: serde_json::Value) {
        self.queue.push_back(Assignment {
            lease,
            program,
            input,
        });
        self.start_ready();
    }

    /// Whether this session holds `lease` (queued, awaiting its module, or running, not
    /// revoked).
    fn holds(&self, lease: LeaseId) -> bool {
        self.queue.iter().any(|queued| queued.lease == lease)
            || self.awaiting.values().any(|waiting| waiting.lease == lease)
            || self
                .running
                .values()
                .any(|running| running.lease == lease && !running.revoked)
    }

    /// Drop revoked leases from the queue; mark running ones so their results are discarded.
    fn revoke(&mut self, leases: &[LeaseId]) {
        for &lease in leases {
            if let Some(index) = self.queue.iter().position(|queued| queued.lease == lease) {
                self.queue.remove(index);
                debug!(lease, "revoked before it started");
            } else if let Some(fetch) = self.waiting_for(lease) {
                // The fetch goes on: other assignments may share it, and the cache keeps it.
                self.awaiting.remove(&fetch);
                debug!(lease, "revoked while its module was on the way");
            } else if let Some(running) = self.running.values_mut().find(|r| r.lease == lease) {
                running.revoked = true;
                debug!(
                    lease,
                    "revoked while computing; its result will be discarded"
                );
            } else {
                debug!(lease, "revoke for a lease we do not hold");
            }
        }
    }

    /// The fetch an awaiting `lease` waits for.
    fn waiting_for(&self, lease: LeaseId) -> Option<task::Id> {
        self.awaiting
            .iter()
            .find(|(_, waiting)| waiting.lease == lease)
            .map(|(&fetch, _)| fetch)
    }

    /// MiB of the memory budget the oldest queued assignment needs: its cap for a module
    /// chunk, nothing for a kernel.
    fn next_needs(&self) -> u32 {
        match self.queue.front().map(|queued| &queued.program) {
            Some(Program::Module { limits, .. }) => limits.memory.mb,
            Some(Program::Kernel(_)) | None => 0,
        }
    }

    /// Start queued assignments while compute slots (and memory) are free.
    fn start_ready(&mut self) {
        while !self.queue.is_empty() {
            let Some(slot) = self.slots.try_take(self.next_needs()) else {
                break;
            };
            self.start_next(slot);
        }
    }

    /// Start the oldest queued assignment on a blocking thread holding `slot`.
    fn start_next(&mut self, slot: Slot) {
        let Some(Assignment {
            lease,
            program,
            input,
        }) = self.queue.pop_front()
        else {
            return;
        };
        let handle = self.tasks.spawn_blocking(move || {
            // The slot is ours until the chunk returns, even if the session is gone by then.
            let _slot = slot;
            compute::run_chunk(&program, &input)
        });
        self.running.insert(
            handle.id(),
            Running {
                lease,
                revoked: false,
            },
        );
    }

    /// A chunk finished: send its result unless the lease was revoked.
    fn on_finished(&mut self, joined: Result<(task::Id, Outcome), JoinError>) {
        let (id, outcome) = match joined {
            Ok(done) => done,
            // `run_chunk` catches kernel panics; this is a panic outside the kernel, or a
            // cancelled task (only on runtime shutdown).
            Err(error) => {
                let id = error.id();
                let outcome = if error.is_panic() {
                    Outcome::Err("kernel panicked".into())
                } else {
                    Outcome::Err("computation cancelled".into())
                };
                (id, outcome)
            }
        };
        let Some(Running { lease, revoked }) = self.running.remove(&id) else {
            return;
        };
        if revoked {
            debug!(lease, "discarding the result of a revoked lease");
            return;
        }
        debug!(lease, ok = !outcome.is_err(), "computed");
        let (text, oversized) = grid_protocol::result_frame(lease, outcome, self.max_message_bytes);
        if oversized {
            warn!(
                lease,
                "result too large for the master: sent as an error outcome"
            );
        }
        let _ = self.out.send(Message::text(text));
    }

    /// Begin a graceful shutdown: no more assignments, queued ones (and those awaiting their
    /// module) go back to the master, running ones finish.
    fn begin_drain(&mut self) {
        self.draining = true;
        info!(
            running = self.tasks.len(),
            queued = self.queue.len() + self.awaiting.len(),
            "shutting down: draining"
        );
        self.send(&WorkerMessage::Drain);
        let mut waiting: Vec<LeaseId> = self
            .awaiting
            .drain()
            .map(|(_, awaiting)| awaiting.lease)
            .collect();
        waiting.sort_unstable();
        self.fetches.abort_all();
        let leases: Vec<LeaseId> = self
            .queue
            .drain(..)
            .map(|queued| queued.lease)
            .chain(waiting)
            .collect();
        if !leases.is_empty() {
            self.send(&WorkerMessage::Release { leases });
        }
    }

    /// Queue a message for the writer. If the writer is gone the session loop notices.
    fn send(&self, message: &WorkerMessage) {
        let _ = self.out.send(Message::text(to_json(message)));
    }
}

/// The writer task: send queued frames until the channel closes or a close frame is sent.
async fn write_frames(
    mut sink: SplitSink<Socket, Message>,
    mut outbox: mpsc::UnboundedReceiver<Message>,
) -> Result<(), tungstenite::Error> {
    while let Some(frame) = outbox.recv().await {
        let closing = matches!(frame, Message::Close(_));
        sink.send(frame).await?;
        if closing {
            break;
        }
    }
    Ok(())
}

/// A close frame with a static reason.
fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The `type` tag of a master message, for logs.
fn kind_of(message: &MasterMessage) -> &'static str {
    match message {
        MasterMessage::Welcome { .. } => "welcome",
        MasterMessage::Assign { .. } => "assign",
        MasterMessage::Revoke { .. } => "revoke",
        MasterMessage::Challenge { .. } => "challenge",
        MasterMessage::Rejected { .. } => "rejected",
        MasterMessage::Error { .. } => "error",
    }
}
