//! The scheduler: one task that owns who holds which lease and decides who gets what next.
//!
//! - [`SchedulerHandle`]: what sessions and REST handlers use to talk to it (an mpsc inbox).
//! - [`dispatch`]: the in-memory cache of ready chunks it hands out.
//!
//! Each round it drains every event waiting in its inbox (results, releases, disconnects, new
//! sessions), plans assignments for every session with free credit, and commits all of it in
//! one [`Batch`] — one transaction however many results and leases are in it (group commit).
//! Only after the commit does it send assignments, revocations and rejections: nothing is
//! acknowledged before it is durable. While a commit is in flight new events queue up, so the
//! batch grows with the load.

pub mod dispatch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use grid_protocol::{LeaseId, MasterMessage, WorkerKind};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::store::{
    Batch, BatchOutcome, ExpirySweep, LeaseEnd, LeaseRequest, ResultSubmission, Store, StoreError,
};
use crate::trust;
use dispatch::{DispatchCache, Proposal, Taker};

/// Identifies one WebSocket session within this master process.
pub type SessionId = u64;

/// Most events taken from the inbox per round.
const MAX_EVENTS_PER_ROUND: usize = 8192;
/// Most bytes of result outcomes taken into one round (review M12): 8192 results of up to
/// 1 MiB each would be one 8 GiB bind, which PostgreSQL refuses (values over 1 GB, messages
/// over about 1 GB) and which no master should hold at once. A round stops taking events once
/// it holds this much; the rest wait in the inbox for the next round.
const MAX_RESULT_BYTES_PER_ROUND: usize = 64 << 20;
/// Revoked leases remembered per session (forgotten all at once beyond this).
const MAX_REMEMBERED_REVOCATIONS: usize = 4096;
/// Sessions per round that may ask the database for chunks of their own.
const MAX_STARVED_QUERIES_PER_ROUND: usize = 4;
/// Ready chunks loaded into the dispatch cache at once.
const CACHE_LOAD_LIMIT: usize = 4096;
/// How often overdue leases are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Capacity of the scheduler's inbox; sessions wait (backpressure) when it is full.
const INBOX_CAPACITY: usize = 65_536;
/// How far back the poll for cancellations made through other masters looks.
const CANCEL_WINDOW: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// What a session's writer sends to its socket.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message.
    Message(MasterMessage),
}

/// Events the scheduler reacts to.
#[derive(Debug)]
pub enum Event {
    /// A worker finished its hello.
    Connected {
        /// The new session.
        session: SessionId,
        /// Its persistent identity.
        worker_id: Arc<str>,
        /// The network it connects from (`None`: a trusted network, independent of all).
        network: Option<Arc<str>>,
        /// Native or browser.
        kind: WorkerKind,
        /// Concurrent chunks it runs.
        slots: u32,
        /// Where its messages go.
        outbox: crate::session::Outbox,
    },
    /// A worker returned a result.
    Result {
        /// The session it came on.
        session: SessionId,
        /// The lease it names.
        lease: LeaseId,
        /// Outcome digest.
        digest: [u8; 32],
        /// Whether the outcome is an error.
        is_error: bool,
        /// Canonical outcome text.
        text: String,
    },
    /// A worker gave leases back.
    Release {
        /// The session.
        session: SessionId,
        /// Leases it will not compute.
        leases: Vec<LeaseId>,
    },
    /// A worker asked for no more work.
    WorkerDrain {
        /// The session.
        session: SessionId,
    },
    /// A session ended.
    Disconnected {
        /// The session.
        session: SessionId,
    },
    /// New work may be available (a job was submitted, here or through another master).
    WorkAvailable,
    /// A job was cancelled through another master sharing the database: revoke the leases
    /// held here now rather than at the next sweep.
    CancelledElsewhere,
    /// Leases revoked outside the scheduler (a job was cancelled): tell their workers.
    Revoked {
        /// The revoked leases.
        leases: Vec<LeaseId>,
    },
    /// The master computed accepted chunks itself (see [`crate::trust::master_checks`]): whether each
    /// accepted output is right.
    MasterChecked {
        /// What it computed.
        checks: Vec<crate::trust::review::MasterCheck>,
    },
    /// Graceful shutdown: assign nothing more; `drained` fires once no lease is outstanding.
    Drain {
        /// Fired when every outstanding lease has a result (or was handed back).
        drained: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable way to reach the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    inbox: mpsc::Sender<Event>,
    next_session: Arc<AtomicU64>,
    master_id: Arc<str>,
}

impl SchedulerHandle {
    /// This master's identity in the database (`masters.id`), fresh per process.
    pub fn master_id(&self) -> &Arc<str> {
        &self.master_id
    }

    /// A fresh session id.
    pub fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Deliver an event, waiting if the scheduler is behind. Returns false once it has stopped.
    pub async fn send(&self, event: Event) -> bool {
        self.inbox.send(event).await.is_ok()
    }

    /// Deliver an event without waiting (used from places that must not block; a full inbox
    /// drops the event, which is only acceptable for hints such as [`Event::WorkAvailable`]).
    pub fn try_send(&self, event: Event) {
        if let Err(error) = self.inbox.try_send(event) {
            tracing::debug!(%error, "scheduler inbox full, hint dropped");
        }
    }
}

/// Per-session state the scheduler keeps.
#[derive(Debug)]
struct Session {
    worker_id: Arc<str>,
    kind: &'static str,
    /// The network it connects from; `None` on the host's trusted networks.
    network: Option<Arc<str>>,
    /// Assignments outstanding at most (slots plus prefetch).
    capacity: usize,
    /// Sessions from untrusted networks start with [`NEW_SESSION_CREDIT`] outstanding
    /// assignments and earn one more per result, up to `capacity`: declaring a huge slot count
    /// buys nothing, and a hoarder holds little. `None`: the whole capacity at once.
    earned_credit: Option<usize>,
    /// Slots counted against its network's [`MAX_SLOTS_PER_NETWORK`].
    granted_slots: usize,
    leases: HashSet<LeaseId>,
    draining: bool,
    outbox: crate::session::Outbox,
    /// Cache generation at which this worker last asked the database for chunks of its own.
    starved_generation: Option<u64>,
    /// Ringers sent to this session so far (new sessions get more spot-checks).
    ringers_sent: u32,
    /// Leases revoked from it recently: a result for one of them crossed the revocation on
    /// the wire and does not count as a refusal (the refusal cap closes sessions that send
    /// results for leases they never held).
    revoked: HashSet<LeaseId>,
    /// Results it returned since it last handed leases back (or since it joined).
    results_since_release: u64,
    /// An untrusted session that handed work back without returning any result gets none
    /// until then (see [`Hoarders`]).
    benched_until: Option<std::time::Instant>,
}

impl Session {
    /// Its origin: the network it connects from, or its identity on a trusted network (see
    /// [`crate::network`]); no chunk goes to one origin twice.
    fn origin(&self) -> &Arc<str> {
        self.network.as_ref().unwrap_or(&self.worker_id)
    }

    fn free_credit(&self) -> usize {
        if self.draining
            || self
                .benched_until
                .is_some_and(|until| until > std::time::Instant::now())
        {
            0
        } else {
            let limit = self
                .earned_credit
                .map_or(self.capacity, |earned| earned.min(self.capacity));
            limit.saturating_sub(self.leases.len())
        }
    }

    fn send(&self, message: MasterMessage) {
        // A closed outbox means the session is ending; its Disconnected event is on its way.
        let _ = self.outbox.send(Outbound::Message(message));
    }
}

/// Slots a session from an untrusted network may declare; more are clamped to this.
pub const MAX_UNTRUSTED_SLOTS: u32 = 64;
/// Slots all sessions of one untrusted network may declare together; sessions beyond it get
/// what is left (possibly nothing).
pub const MAX_SLOTS_PER_NETWORK: usize = 256;
/// Outstanding assignments a session from an untrusted network starts with.
pub const NEW_SESSION_CREDIT: usize = 8;
/// How long an untrusted origin that handed work back without a result gets none: doubled at
/// each such release in a row, up to [`HOARDER_BENCH_MAX`].
pub const HOARDER_BENCH: std::time::Duration = std::time::Duration::from_secs(15);
/// The longest bench of a hoarding origin.
pub const HOARDER_BENCH_MAX: std::time::Duration = std::time::Duration::from_secs(600);
/// Origins remembered as hoarders at most (the oldest are forgotten first).
const HOARDERS_REMEMBERED: usize = 4096;

/// Untrusted origins that took work and handed it back without computing any (review H5's
/// hoarders): each such release in a row benches the origin for twice as long, across its
/// sessions (a reconnect does not reset it), and a result clears it. Without this, sessions
/// that hoard leases and release them every few seconds keep the last chunks of a job away
/// from the honest workers for ever (measured: 16 % of the honest rate with 64 of them).
/// Honest workers hand leases back when they drain, pause or cannot fetch a module; a
/// session that did compute something since its last release is not benched.
#[derive(Debug, Default)]
struct Hoarders {
    by_origin: HashMap<Arc<str>, (u32, std::time::Instant)>,
}

impl Hoarders {
    /// `origin` handed work back without a result: the end of its bench.
    fn strike(&mut self, origin: &Arc<str>) -> std::time::Instant {
        let now = std::time::Instant::now();
        if self.by_origin.len() >= HOARDERS_REMEMBERED && !self.by_origin.contains_key(origin) {
            self.by_origin.retain(|_, (_, until)| *until > now);
            if self.by_origin.len() >= HOARDERS_REMEMBERED {
                self.by_origin.clear();
            }
        }
        let entry = self.by_origin.entry(origin.clone()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let bench = HOARDER_BENCH
            .saturating_mul(1u32 << (entry.0 - 1).min(10))
            .min(HOARDER_BENCH_MAX);
        entry.1 = now + bench;
        entry.1
    }

    /// `origin` returned a result.
    fn clear(&mut self, origin: &Arc<str>) {
        if !self.by_origin.is_empty() {
            self.by_origin.remove(origin);
        }
    }

    /// The bench a new session of `origin` inherits.
    fn bench_of(&self, origin: &Arc<str>) -> Option<std::time::Instant> {
        self.by_origin
            .get(origin)
            .map(|(_, until)| *until)
            .filter(|until| *until > std::time::Instant::now())
    }
}

/// Assignments kept beyond a worker's slots so no core idles between a result and the next
/// assignment: a quarter of the slots, at least one.
pub fn capacity_for(slots: u32) -> usize {
    let slots = slots as usize;
    slots + slots.div_ceil(4).max(1)
}

/// Hand the changes other masters make ([`Store::watch_changes`]) to the scheduler, until
/// the feed ends or the master stops (`stop` flips): then its handle is dropped, so the
/// scheduler can stop, and the feed with it.
pub async fn follow_changes(
    mut changes: mpsc::Receiver<crate::store::Change>,
    scheduler: SchedulerHandle,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let Some(change) = change else { return };
        scheduler.try_send(match change {
            crate::store::Change::WorkAvailable => Event::WorkAvailable,
            crate::store::Change::Cancelled(_) => Event::CancelledElsewhere,
        });
    }
}

/// Start the scheduler task. It stops when every handle is dropped.
pub fn spawn(
    store: Arc<dyn Store>,
    trust_off: bool,
) -> (SchedulerHandle, tokio::task::JoinHandle<()>) {
    let (inbox, events) = mpsc::channel(INBOX_CAPACITY);
    // A fresh identity per process: leases name the master whose session holds them.
    let master_id: Arc<str> =
        Arc::from(format!("master-{}", hex::encode(rand::random::<[u8; 8]>())));
    tracing::info!(master = %master_id, "scheduler started");
    let handle = SchedulerHandle {
        inbox,
        next_session: Arc::new(AtomicU64::new(1)),
        master_id: master_id.clone(),
    };
    let scheduler = Scheduler {
        store,
        network_slots: HashMap::new(),
        events,
        sessions: HashMap::new(),
        holders: HashMap::new(),
        cache: DispatchCache::new(),
        batch: Batch {
            // The previous process's sessions died with it, and so did their leases.
            sweep: ExpirySweep::Startup,
            master_id: master_id.clone(),
            trust_off,
            ..Batch::default()
        },
        planned: Vec::new(),
        result_sessions: HashMap::new(),
        draining_all: false,
        drain_waiters: Vec::new(),
        ringers: DispatchCache::new(),
        blacklist: HashSet::new(),
        unchecked_identities: HashSet::new(),
        trust_loaded_at: None,
        cancels_followed: HashSet::new(),
        cancels_due: false,
        hoarders: Hoarders::default(),
    };
    let task = tokio::spawn(scheduler.run());
    (handle, task)
}

struct Scheduler {
    store: Arc<dyn Store>,
    /// Slots granted to the sessions of each untrusted network.
    network_slots: HashMap<Arc<str>, usize>,
    events: mpsc::Receiver<Event>,
    sessions: HashMap<SessionId, Session>,
    /// Which session holds each live lease.
    holders: HashMap<LeaseId, SessionId>,
    cache: DispatchCache,
    /// The batch being assembled this round.
    batch: Batch,
    /// For each entry of `batch.leases`, the session and proposal it came from.
    planned: Vec<(SessionId, Proposal)>,
    /// Which session sent each result of the round, by lease (to answer refusals).
    result_sessions: HashMap<LeaseId, SessionId>,
    /// A graceful shutdown has begun: no new assignments.
    draining_all: bool,
    /// Accepted chunks to send as spot-checks.
    ringers: DispatchCache,
    /// Identities that get no more work.
    blacklist: HashSet<Arc<str>>,
    /// Identities connected since the blacklist was last asked about them: they get no work
    /// until it was (the next round asks; see `refresh_trust`).
    unchecked_identities: HashSet<Arc<str>>,
    /// When the ringer pool and the blacklist were last loaded.
    trust_loaded_at: Option<std::time::Instant>,
    /// Jobs cancelled recently whose leases this master has revoked already.
    cancels_followed: HashSet<i64>,
    /// Another master announced a cancel: read the cancellations this round.
    cancels_due: bool,
    /// Told once no lease is outstanding during a graceful shutdown.
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// Untrusted origins benched for handing work back undone.
    hoarders: Hoarders,
}

impl Event {
    /// Bytes of outcome text this event brings into a batch.
    fn result_bytes(&self) -> usize {
        match self {
            Event::Result { text, .. } => text.len(),
            _ => 0,
        }
    }
}

impl Scheduler {
    async fn run(mut self) {
        let mut events = Vec::with_capacity(MAX_EVENTS_PER_ROUND);
        let mut busy = true;
        // The sweep (lease deadlines, and this master's heartbeat on a shared database) is due
        // every SWEEP_INTERVAL whether the scheduler is idle or busy: under sustained load a
        // sweep that waited for an idle moment would never run, and peer masters would take
        // this one for dead and expire all its leases.
        let mut next_sweep = tokio::time::Instant::now() + SWEEP_INTERVAL;
        loop {
            if !busy {
                // Nothing known to be waiting: sleep until an event or the sweep is due.
                tokio::select! {
                    event = self.events.recv() => {
                        let Some(event) = event else { break };
                        events.push(event);
                    }
                    _ = tokio::time::sleep_until(next_sweep) => {}
                }
            }
            // Take what has queued up, without blocking, within the round's bounds.
            let mut result_bytes: usize = events.iter().map(Event::result_bytes).sum();
            while events.len() < MAX_EVENTS_PER_ROUND && result_bytes < MAX_RESULT_BYTES_PER_ROUND {
                match self.events.try_recv() {
                    Ok(event) => {
                        result_bytes += event.result_bytes();
                        events.push(event);
                    }
                    Err(_) => break,
                }
            }
            let now = tokio::time::Instant::now();
            if now >= next_sweep {
                self.on_sweep_tick();
                self.cancels_due = true;
                next_sweep = now + SWEEP_INTERVAL;
            }
            for event in events.drain(..) {
                self.apply(event);
            }
            if std::mem::take(&mut self.cancels_due)
                && let Err(error) = self.follow_cancellations().await
            {
                tracing::warn!(%error, "could not read cancellations");
            }
            if !self.draining_all
                && let Err(error) = self.plan().await
            {
                tracing::warn!(%error, "could not load ready chunks");
            }
            if self.batch.is_empty() {
                busy = false;
            } else {
                let outcome = self.commit().await;
                busy = self.settle(outcome);
            }
            if self.draining_all && self.holders.is_empty() && self.batch.is_empty() {
                for waiter in self.drain_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
        tracing::info!("scheduler stopped");
    }

    fn on_sweep_tick(&mut self) {
        self.batch.sweep = match self.batch.sweep {
            ExpirySweep::Startup => ExpirySweep::Startup,
            _ => ExpirySweep::Overdue,
        };
        // A safety net against missed hints (e.g. another master changed the database).
        if self.sessions.values().any(|s| s.free_credit() > 0) {
            self.cache.invalidate();
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Connected {
                session,
                worker_id,
                network,
                kind,
                slots,
                outbox,
            } => {
                let kind = match kind {
                    WorkerKind::Native => "native",
                    WorkerKind::Browser => "browser",
                };
                self.batch.workers_seen.push((worker_id.clone(), kind));
                metrics::gauge!("grid_workers_connected", "kind" => kind).increment(1.0);
                let (capacity, mut earned_credit, granted_slots) = match &network {
                    None => (capacity_for(slots), None, 0),
                    Some(net) => {
                        let used = self.network_slots.entry(net.clone()).or_default();
                        let granted = (slots.min(MAX_UNTRUSTED_SLOTS) as usize)
                            .min(MAX_SLOTS_PER_NETWORK.saturating_sub(*used));
                        *used += granted;
                        let capacity = if granted == 0 {
                            0
                        } else {
                            capacity_for(granted as u32)
                        };
                        (capacity, Some(NEW_SESSION_CREDIT), granted)
                    }
                };
                if !self.batch.trust_off {
                    self.unchecked_identities.insert(worker_id.clone());
                }
                let benched_until = network.as_ref().and_then(|net| {
                    let bench = self.hoarders.bench_of(net);
                    earned_credit =
                        earned_credit.map(|credit| if bench.is_some() { 1 } else { credit });
                    bench
                });
                self.sessions.insert(
                    session,
                    Session {
                        network,
                        worker_id,
                        kind,
                        capacity,
                        earned_credit,
                        granted_slots,
                        leases: HashSet::new(),
                        draining: false,
                        outbox,
                        starved_generation: None,
                        ringers_sent: 0,
                        revoked: HashSet::new(),
                        results_since_release: 0,
                        benched_until,
                    },
                );
            }
            Event::Result {
                session,
                lease,
                digest,
                is_error,
                text,
            } => {
                let holder = self.sessions.get_mut(&session);
                match holder {
                    Some(state) if self.holders.get(&lease) == Some(&session) => {
                        self.holders.remove(&lease);
                        state.leases.remove(&lease);
                        if let Some(earned) = state.earned_credit.as_mut() {
                            *earned += 1;
                        }
                        state.results_since_release += 1;
                        if let Some(net) = &state.network {
                            self.hoarders.clear(net);
                        }
                        self.result_sessions.insert(lease, session);
                        self.batch.results.push(ResultSubmission {
                            lease,
                            worker_id: state.worker_id.clone(),
                            digest,
                            is_error,
                            text,
                        });
                    }
                    // A result racing its lease's revocation is honest: refused, not counted.
                    Some(state) if state.revoked.contains(&lease) => {
                        state.revoked.remove(&lease);
                        state.send(MasterMessage::Rejected {
                            lease,
                            reason: "the lease was revoked".into(),
                        });
                    }
                    Some(state) => state.outbox.refuse(MasterMessage::Rejected {
                        lease,
                        reason: "this session does not hold that lease".into(),
                    }),
                    None => {}
                }
            }
            Event::Release { session, leases } => {
                if let Some(state) = self.sessions.get_mut(&session) {
                    let mut released = 0;
                    for lease in leases {
                        if state.leases.remove(&lease) {
                            released += 1;
                            self.holders.remove(&lease);
                            self.batch.ended.push((lease, LeaseEnd::Released));
                            // Handing work back costs the credit a result would have earned.
                            if let Some(earned) = state.earned_credit.as_mut() {
                                *earned = earned.saturating_sub(1).max(1);
                            }
                        }
                    }
                    // An untrusted session that gives back work without having computed
                    // anything since its last release is benched (see `Hoarders`); a
                    // draining one is ending anyway.
                    if released > 0
                        && state.results_since_release == 0
                        && !state.draining
                        && let Some(net) = &state.network
                    {
                        state.benched_until = Some(self.hoarders.strike(net));
                        metrics::counter!("grid_hoarders_benched_total").increment(1);
                    }
                    state.results_since_release = 0;
                }
            }
            Event::WorkerDrain { session } => {
                if let Some(state) = self.sessions.get_mut(&session) {
                    state.draining = true;
                }
            }
            Event::Drain { drained } => {
                tracing::info!(
                    outstanding = self.holders.len(),
                    "draining: no new assignments"
                );
                self.draining_all = true;
                self.drain_waiters.push(drained);
            }
            Event::Disconnected { session } => {
                if let Some(state) = self.sessions.remove(&session) {
                    metrics::gauge!("grid_workers_connected", "kind" => state.kind).decrement(1.0);
                    if let Some(net) = &state.network
                        && let Some(used) = self.network_slots.get_mut(net)
                    {
                        *used = used.saturating_sub(state.granted_slots);
                        if *used == 0 {
                            self.network_slots.remove(net);
                        }
                    }
                    for lease in state.leases {
                        self.holders.remove(&lease);
                        let end = if self.draining_all {
                            LeaseEnd::MasterLeft
                        } else {
                            LeaseEnd::WorkerGone
                        };
                        self.batch.ended.push((lease, end));
                    }
                }
            }
            Event::WorkAvailable => self.cache.invalidate(),
            Event::CancelledElsewhere => self.cancels_due = true,
            Event::MasterChecked { checks } => {
                // The first answers the master knows: spot-checks can use them at once (a new
                // grid would otherwise run a whole job before anyone could earn trust).
                if self.ringers.is_empty() && checks.iter().any(|check| check.agreed) {
                    self.trust_loaded_at = None;
                }
                self.batch.master_checks.extend(checks);
            }
            Event::Revoked { leases } => {
                self.revoke(&leases);
                self.cache.invalidate();
            }
        }
    }

    /// Cancels made through other masters sharing the database: revoke the leases this
    /// master's workers hold of those jobs (a cancel made here tells the scheduler directly,
    /// [`Event::Revoked`]). Run when another master announces a cancel
    /// ([`Event::CancelledElsewhere`]), and with every sweep in case an announcement was lost.
    async fn follow_cancellations(&mut self) -> Result<(), Error> {
        if self.holders.is_empty() {
            return Ok(());
        }
        // The window reaches back far longer than a cancel transaction lasts: PostgreSQL
        // stamps `finished_at` when the transaction starts, not when it commits.
        let since = chrono::Utc::now() - CANCEL_WINDOW;
        let cancelled = self.store.cancelled_since(since).await?;
        self.cancels_followed.retain(|id| cancelled.contains(id));
        let new: Vec<i64> = cancelled
            .into_iter()
            .filter(|id| !self.cancels_followed.contains(id))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let revoked = self
            .store
            .revoked_leases_of(&new, &self.batch.master_id)
            .await?;
        self.cancels_followed.extend(new);
        let held: Vec<LeaseId> = revoked
            .into_iter()
            .filter(|lease| self.holders.contains_key(lease))
            .collect();
        if !held.is_empty() {
            tracing::info!(
                leases = held.len(),
                "revoking leases of jobs cancelled elsewhere"
            );
            self.revoke(&held);
            self.cache.invalidate();
        }
        Ok(())
    }

    /// Drop leases from their sessions and tell the workers to stop.
    fn revoke(&mut self, leases: &[LeaseId]) {
        let mut per_session: HashMap<SessionId, Vec<LeaseId>> = HashMap::new();
        for lease in leases {
            if let Some(session) = self.holders.remove(lease) {
                per_session.entry(session).or_default().push(*lease);
            }
        }
        for (session, leases) in per_session {
            if let Some(state) = self.sessions.get_mut(&session) {
                if state.revoked.len() + leases.len() > MAX_REMEMBERED_REVOCATIONS {
                    state.revoked.clear();
                }
                for lease in &leases {
                    state.leases.remove(lease);
                    state.revoked.insert(*lease);
                }
                state.send(MasterMessage::Revoke { leases });
            }
        }
    }

    /// Propose assignments for every session with free credit.
    async fn plan(&mut self) -> Result<(), Error> {
        self.check_new_identities().await?;
        let mut hungry: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.free_credit() > 0 && !self.blacklist.contains(&s.worker_id))
            .map(|(id, _)| *id)
            .collect();
        if hungry.is_empty() {
            return Ok(());
        }
        self.refresh_trust().await?;
        // In random order: which sessions get the replicas of one chunk must not be up to the
        // sessions (colluders connected back to back would otherwise get both).
        rand::seq::SliceRandom::shuffle(hungry.as_mut_slice(), &mut rand::rng());
        if self.cache.needs_load() {
            let (chunks, truncated) =
                dispatch::load_fair_share(self.store.as_ref(), &self.cache, CACHE_LOAD_LIMIT)
                    .await?;
            self.cache.load(chunks, truncated);
        }
        // Sessions the cache cannot serve ask the database for chunks of their own, but only a
        // few per round: one query each for thousands of starved sessions would stall the
        // scheduler (review H5); the others get their turn in later rounds.
        let mut starved_queries = MAX_STARVED_QUERIES_PER_ROUND;
        for session_id in hungry {
            let Some(session) = self.sessions.get_mut(&session_id) else {
                continue;
            };
            let want = session.free_credit();
            let worker_id = session.worker_id.clone();
            let origin = session.origin().clone();
            let network = session.network.clone();
            let taker = Taker {
                worker_id: &worker_id,
                origin: &origin,
            };
            let mut proposals = self.cache.take_for(taker, want);
            if proposals.len() < want
                && self.cache.is_truncated()
                && starved_queries > 0
                && session.starved_generation != Some(self.cache.generation())
            {
                starved_queries -= 1;
                // Everything cached may be held by this worker already while the database has
                // more further down: ask for chunks this worker may take.
                session.starved_generation = Some(self.cache.generation());
                let more = self
                    .store
                    .ready_chunks((want * 4) as i64, Some((&worker_id, &origin)))
                    .await?;
                self.cache.merge(more);
                proposals.extend(self.cache.take_for(taker, want - proposals.len()));
            }
            // Spot-checks: some slots carry a ringer instead (a known answer, see docs/trust.md).
            let mut ringers = Vec::new();
            if let Some(session) = self.sessions.get_mut(&session_id) {
                while ringers.len() < proposals.len() {
                    let rate = if session.ringers_sent < trust::NEW_WORKER_RINGERS {
                        trust::NEW_WORKER_RINGER_RATE
                    } else {
                        trust::RINGER_RATE
                    };
                    if rand::random::<f64>() >= rate {
                        break;
                    }
                    match self.ringers.take_for_one(taker) {
                        Some(ringer) => {
                            session.ringers_sent += 1;
                            ringers.push(ringer);
                        }
                        None => break,
                    }
                }
            }
            if !ringers.is_empty() {
                // The displaced proposals stay wanted: the next cache load offers them again.
                proposals.truncate(proposals.len() - ringers.len());
                self.cache.invalidate();
            }
            for (proposal, ringer) in proposals
                .into_iter()
                .map(|p| (p, false))
                .chain(ringers.into_iter().map(|p| (p, true)))
            {
                self.batch.leases.push(LeaseRequest {
                    job_id: proposal.job_id,
                    idx: proposal.idx,
                    worker_id: worker_id.clone(),
                    origin: network.clone(),
                    lease_seconds: proposal.lease_seconds,
                    ringer,
                });
                self.planned.push((session_id, proposal));
            }
            // Count the planned leases against the session's credit for the rest of the round.
        }
        Ok(())
    }

    /// Reload the ringer pool and the blacklist now and then (other masters blacklist too).
    async fn refresh_trust(&mut self) -> Result<(), Error> {
        let interval = if self.ringers.is_empty() {
            trust::TRUST_REFRESH_EMPTY_POOL
        } else {
            trust::TRUST_REFRESH
        };
        if self.batch.trust_off
            || self
                .trust_loaded_at
                .is_some_and(|at| at.elapsed() < interval)
        {
            return Ok(());
        }
        self.trust_loaded_at = Some(std::time::Instant::now());
        let pool = self.store.ringer_pool(trust::RINGER_POOL_SIZE).await?;
        self.ringers.load(pool, false);
        // The blacklist of the identities connected here (other masters blacklist too): as
        // many as the sessions, however many identities have been burned.
        let connected: HashSet<&Arc<str>> = self.sessions.values().map(|s| &s.worker_id).collect();
        let connected: Vec<String> = connected.into_iter().map(|id| id.to_string()).collect();
        self.blacklist = self
            .store
            .blacklisted_among(&connected)
            .await?
            .into_iter()
            .map(Arc::from)
            .collect();
        self.unchecked_identities.clear();
        Ok(())
    }

    /// Ask the database whether identities that connected since the last round are
    /// blacklisted, before any of them gets work: one query per round, however many connected.
    async fn check_new_identities(&mut self) -> Result<(), Error> {
        if self.unchecked_identities.is_empty() {
            return Ok(());
        }
        let new: Vec<String> = self
            .unchecked_identities
            .iter()
            .map(|id| id.to_string())
            .collect();
        let burned = self.store.blacklisted_among(&new).await?;
        self.blacklist.extend(burned.into_iter().map(Arc::from));
        self.unchecked_identities.clear();
        Ok(())
    }

    /// Commit the round's batch, retrying while the database is unreachable. A batch the
    /// database keeps refusing for another reason is split: everything but the results is
    /// committed first, then the results in halves until the refused ones are isolated, so
    /// one bad row never costs the honest results beside it (they are recorded; the refused
    /// ones are answered with `rejected`).
    async fn commit(&mut self) -> Option<BatchOutcome> {
        let events = self.batch.results.len() + self.batch.ended.len() + self.batch.leases.len();
        metrics::histogram!("grid_scheduler_batch_events").record(events as f64);
        match self.commit_with_retries(&self.batch, 2).await {
            Ok(outcome) => Some(outcome),
            Err(error) if self.batch.results.is_empty() => {
                // Not a connectivity problem and nothing to isolate: give up on this batch.
                // Its leases stay leased in the database and expire at their deadline, so the
                // work is reissued rather than lost.
                tracing::error!(?error, "dropping a scheduler batch the database refuses");
                None
            }
            Err(error) => {
                tracing::warn!(
                    ?error,
                    "the database refuses a batch: isolating the bad rows"
                );
                metrics::counter!("grid_scheduler_batches_split_total").increment(1);
                Some(self.commit_isolating().await)
            }
        }
    }

    /// Commit `batch`, retrying for as long as the database is unreachable and `attempts`
    /// times for any other error (a deadlock or serialization failure passes on a retry).
    async fn commit_with_retries(
        &self,
        batch: &Batch,
        attempts: u32,
    ) -> Result<BatchOutcome, StoreError> {
        let mut delay = Duration::from_millis(50);
        let mut failed = 0u32;
        loop {
            let started = std::time::Instant::now();
            let committed = self.store.commit(batch).await;
            metrics::histogram!("grid_db_commit_seconds").record(started.elapsed().as_secs_f64());
            match committed {
                Ok(outcome) => return Ok(outcome),
                Err(error) => {
                    if !matches!(error, StoreError::Unavailable(_)) {
                        failed += 1;
                        if failed >= attempts {
                            return Err(error);
                        }
                    }
                    tracing::warn!(%error, failed, "scheduler commit failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The split commit of [`Self::commit`]: the batch without its results, then the results
    /// bisected. Each result is committed or refused exactly once.
    async fn commit_isolating(&mut self) -> BatchOutcome {
        let results = std::mem::take(&mut self.batch.results);
        let mut outcome = match self.commit_with_retries(&self.batch, 2).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(?error, "dropping the non-result part of a scheduler batch");
                self.planned.clear();
                BatchOutcome::default()
            }
        };
        let mut pending = vec![results];
        while let Some(mut part) = pending.pop() {
            let only_results = Batch {
                master_id: self.batch.master_id.clone(),
                trust_off: self.batch.trust_off,
                results: std::mem::take(&mut part),
                ..Batch::default()
            };
            match self.commit_with_retries(&only_results, 1).await {
                Ok(done) => outcome.absorb(done),
                Err(error) if only_results.results.len() == 1 => {
                    let lease = only_results.results[0].lease;
                    tracing::warn!(?error, lease, "a result the database refuses was dropped");
                    metrics::counter!("grid_results_refused_by_database_total").increment(1);
                    outcome.refused.push(lease);
                }
                Err(_) => {
                    let mut first = only_results.results;
                    let second = first.split_off(first.len() / 2);
                    pending.push(second);
                    pending.push(first);
                }
            }
        }
        outcome
    }

    /// Act on a committed batch: send assignments, revocations and rejections. Returns whether
    /// another round should run at once.
    fn settle(&mut self, outcome: Option<BatchOutcome>) -> bool {
        let next = Batch {
            master_id: self.batch.master_id.clone(),
            trust_off: self.batch.trust_off,
            ..Batch::default()
        };
        let batch = std::mem::replace(&mut self.batch, next);
        let planned = std::mem::take(&mut self.planned);
        let Some(outcome) = outcome else {
            self.result_sessions.clear();
            self.cache.invalidate();
            return false;
        };
        record_metrics(&batch, &outcome);
        let result_sessions = std::mem::take(&mut self.result_sessions);
        for lease in &outcome.refused {
            // The session let go of the lease when the result arrived; it is no longer live in
            // the database either (revoked by a cancel, or expired meanwhile).
            if let Some(session) = result_sessions
                .get(lease)
                .and_then(|id| self.sessions.get(id))
            {
                session.send(MasterMessage::Rejected {
                    lease: *lease,
                    reason: "the lease is no longer live".into(),
                });
            }
        }
        if outcome.created.len() < planned.len() {
            // Some proposals were refused by the database: the cache was out of date.
            self.cache.invalidate();
        }
        let mut progress = !outcome.created.is_empty();
        for created in &outcome.created {
            let Some((session_id, proposal)) = planned.get(created.request) else {
                continue;
            };
            let Some(session) = self.sessions.get_mut(session_id) else {
                continue;
            };
            session.leases.insert(created.lease);
            self.holders.insert(created.lease, *session_id);
            session.send(MasterMessage::Assign {
                lease: created.lease,
                task: (*proposal.task).clone(),
                input: (*proposal.input).clone(),
                deadline_seconds: u32::try_from(proposal.lease_seconds).unwrap_or(60),
            });
        }
        if !outcome.revoked.is_empty() || !outcome.expired.is_empty() {
            progress = true;
            self.revoke(&outcome.revoked);
            self.revoke(&outcome.expired);
        }
        if outcome.reopened {
            progress = true;
            self.cache.invalidate();
        }
        for worker in outcome.blacklisted.iter().filter(|_| !batch.trust_off) {
            self.blacklist.insert(Arc::from(worker.as_str()));
        }
        for worker in &outcome.unblacklisted {
            self.blacklist.remove(worker.as_str());
        }
        // Blacklisted sessions stay hungry for ever: they must not keep the scheduler busy.
        progress
            && self
                .sessions
                .values()
                .any(|s| s.free_credit() > 0 && !self.blacklist.contains(&s.worker_id))
    }
}

fn record_metrics(batch: &Batch, outcome: &BatchOutcome) {
    metrics::counter!("grid_results_total").increment(outcome.recorded.len() as u64);
    metrics::counter!("grid_results_rejected_total").increment(outcome.refused.len() as u64);
    metrics::counter!("grid_leases_issued_total").increment(outcome.created.len() as u64);
    metrics::counter!("grid_chunks_decided_total", "outcome" => "accepted")
        .increment(outcome.accepted);
    metrics::counter!("grid_chunks_decided_total", "outcome" => "failed").increment(outcome.failed);
    metrics::counter!("grid_replica_verdicts_total", "verdict" => "valid")
        .increment(outcome.valid_replicas);
    metrics::counter!("grid_replica_verdicts_total", "verdict" => "invalid")
        .increment(outcome.invalid_replicas);
    metrics::counter!("grid_chunks_accepted_alone_total").increment(outcome.accepted_alone);
    metrics::counter!("grid_ringers_judged_total").increment(outcome.ringers_judged);
    metrics::counter!("grid_workers_blacklisted_total").increment(outcome.blacklisted.len() as u64);
    metrics::counter!("grid_chunks_backtracked_total").increment(outcome.backtracked);
    let gone = batch
        .ended
        .iter()
        .filter(|(_, end)| *end == LeaseEnd::WorkerGone)
        .count();
    let released = batch.ended.len() - gone;
    metrics::counter!("grid_lease_ends_total", "reason" => "worker_gone").increment(gone as u64);
    metrics::counter!("grid_lease_ends_total", "reason" => "released").increment(released as u64);
    metrics::counter!("grid_lease_ends_total", "reason" => "deadline")
        .increment(outcome.expired.len() as u64);
    metrics::counter!("grid_lease_ends_total", "reason" => "revoked")
        .increment(outcome.revoked.len() as u64);
}

#[cfg(test)]
mod hoarder_tests {
    use super::{HOARDER_BENCH, HOARDER_BENCH_MAX, Hoarders};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn each_undone_hand_back_doubles_the_bench_and_a_result_clears_it() {
        let mut hoarders = Hoarders::default();
        let origin: Arc<str> = Arc::from("net:127.0.9.0/24");
        let other: Arc<str> = Arc::from("net:127.0.8.0/24");
        let start = Instant::now();
        let first = hoarders.strike(&origin) - start;
        let second = hoarders.strike(&origin) - start;
        assert!(
            first >= HOARDER_BENCH && first < HOARDER_BENCH * 2,
            "{first:?}"
        );
        assert!(
            second >= HOARDER_BENCH * 2 && second < HOARDER_BENCH * 3,
            "{second:?}"
        );
        for _ in 0..20 {
            hoarders.strike(&origin);
        }
        let capped = hoarders.bench_of(&origin).expect("benched") - start;
        assert!(capped <= HOARDER_BENCH_MAX + HOARDER_BENCH, "{capped:?}");
        assert_eq!(
            hoarders.bench_of(&other),
            None,
            "other origins are not benched"
        );
        hoarders.clear(&origin);
        assert_eq!(
            hoarders.bench_of(&origin),
            None,
            "a result clears the bench"
        );
    }
}
