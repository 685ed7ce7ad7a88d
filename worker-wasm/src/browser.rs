//! [`BrowserWorker`]: one compute slot in a Web Worker, with its own WebSocket to the master.
//!
//! The page starts one Web Worker per thread; each runs one `BrowserWorker`, which says hello
//! with `slots: 1`, so the master sees as many slots as the volunteer chose threads. All of a
//! volunteer's Web Workers use the same persistent identity (the page keeps it in
//! `localStorage`, which Web Workers cannot read, and passes it in): the master never gives two
//! replicas of one chunk to one volunteer.
//!
//! Everything here runs on the Web Worker's single thread, driven by JavaScript events: socket
//! open/message/close, three timers (heartbeat, reconnect, the duty cycle's idle pause) and a
//! `MessageChannel` used to yield to the event loop between chunks without the 4 ms clamp of
//! nested `setTimeout(0)`. Each event handler is a [`Closure`] created once per socket or once
//! per worker and kept in the state, never `forget()`-ed; it holds a [`Weak`] reference, so the
//! state is freed when JavaScript frees the `BrowserWorker`.
//!
//! Kernel chunks are computed synchronously inside the pump. A task-module chunk is only
//! *started* there: a future (`wasm_bindgen_futures::spawn_local`) runs it through the
//! [`ModuleRunner`] (fetch, compile, sandbox Web Worker) while this thread goes on with socket
//! events and heartbeats; the slot stays busy until the answer is delivered to
//! `Worker::module_done`. Each started chunk gets a ticket: an answer whose ticket is no longer
//! the running one (the lease was revoked, the session ended or paused) is dropped, and the
//! sandbox is told to stop as soon as the chunk is abandoned.
//!
//! The protocol logic is in [`crate::session`]; here is only the plumbing.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use grid_protocol::{LeaseId, Task};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{BinaryType, CloseEvent, MessageChannel, MessageEvent, WebSocket};

use crate::compute::{result_frame, run_kernel};
use crate::duty_cycle::DutyCycle;
use crate::module_runner::{ModuleHost, ModuleRunner};
use crate::session::{Assignment, Reaction, Session, SessionError};
use crate::status::{Connection, Status};
use crate::task_module::{ChunkEnd, ModuleTask, Unrunnable};
use grid_protocol::backoff::Backoff;
use grid_task_abi::module_url;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, timeout_ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
    #[wasm_bindgen(js_name = setInterval)]
    fn set_interval(handler: &js_sys::Function, timeout_ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearInterval)]
    fn clear_interval(handle: &JsValue);
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// Progress is posted to the page at most this often (state changes are posted at once).
const STATUS_INTERVAL_MS: f64 = 200.0;

/// After giving a chunk back, wait this long before the next one: the master may hand the
/// same work straight back, and a module that cannot be fetched now rarely can a moment later.
const GIVE_BACK_PAUSE_MS: f64 = 1000.0;

/// Close codes a page may send (1000 or 3000-4999); 4000+ are this protocol's own.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_MALFORMED: u16 = 4000;

/// One compute slot: a WebSocket session with the master and the loop computing its chunks.
#[wasm_bindgen]
#[derive(Debug)]
pub struct BrowserWorker {
    /// The state every event handler shares.
    shared: Rc<RefCell<Worker>>,
}

#[wasm_bindgen]
impl BrowserWorker {
    /// A worker for the master at `url` (`ws://` or `wss://`, ending in `/ws`), as volunteer
    /// `worker_id`, using `cpu_percent` of its thread. `on_status` is called with a status
    /// object (see [`Status`]) whenever something changes. `module_host` fetches and runs
    /// task modules (`ModuleHost` of `frontend/src/modules.js`). Not connected until
    /// [`Self::start`].
    #[wasm_bindgen(constructor)]
    pub fn new(
        url: String,
        worker_id: String,
        cpu_percent: u32,
        on_status: js_sys::Function,
        module_host: ModuleHost,
    ) -> Result<BrowserWorker, JsValue> {
        install_panic_hook();
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(JsValue::from_str(
                "the master's URL must start with ws:// or wss://",
            ));
        }
        if !grid_protocol::is_valid_worker_id(&worker_id) {
            return Err(JsValue::from_str(
                "the volunteer identity must be 1 to 128 characters of [A-Za-z0-9._:-]",
            ));
        }
        let channel = MessageChannel::new()?;
        let shared = Rc::new_cyclic(|me: &Weak<RefCell<Worker>>| {
            RefCell::new(Worker {
                url,
                worker_id,
                duty: DutyCycle::new(cpu_percent),
                on_status,
                running: false,
                link: None,
                retired: None,
                backoff: Backoff::default(),
                status: Status::default(),
                last_post_ms: f64::NEG_INFINITY,
                timers: Timers::default(),
                pump_posted: false,
                modules: Rc::new(ModuleRunner::new(module_host)),
                chunk: None,
                next_ticket: 0,
                last_compute_ms: 0.0,
                last_chunk_end_ms: 0.0,
                idle_until_ms: 0.0,
                callbacks: Callbacks::new(me),
                channel,
                me: me.clone(),
            })
        });
        {
            let worker = shared.borrow();
            worker
                .channel
                .port1()
                .set_onmessage(Some(worker.callbacks.pump.as_ref().unchecked_ref()));
        }
        Ok(BrowserWorker { shared })
    }

    /// Connect (or reconnect after a pause) and start computing.
    pub fn start(&self) {
        if let Ok(mut worker) = self.shared.try_borrow_mut() {
            worker.start();
        }
    }

    /// Stop computing: queued assignments go back to the master, the socket closes. Nothing
    /// is held while paused.
    pub fn pause(&self) {
        if let Ok(mut worker) = self.shared.try_borrow_mut() {
            worker.pause();
        }
    }

    /// Change the CPU-use setting (1 to 100 percent); applies from the current pause on.
    pub fn set_cpu_percent(&self, percent: u32) {
        if let Ok(mut worker) = self.shared.try_borrow_mut() {
            worker.set_cpu_percent(percent);
        }
    }
}

/// Log panics to the console: on wasm they abort the Web Worker, and the page restarts it.
fn install_panic_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&JsValue::from_str(&format!("grid worker: {info}")));
        }));
    });
}

/// Handlers that live as long as the worker.
struct Callbacks {
    /// Runs the compute loop once (zero-delay message or the idle timer).
    pump: Closure<dyn FnMut()>,
    /// Sends a heartbeat.
    heartbeat: Closure<dyn FnMut()>,
    /// Opens a new connection after the backoff delay.
    reconnect: Closure<dyn FnMut()>,
    /// Posts progress held back by the rate limit.
    status: Closure<dyn FnMut()>,
}

impl Callbacks {
    fn new(me: &Weak<RefCell<Worker>>) -> Callbacks {
        Callbacks {
            pump: handler(me, |worker| {
                worker.pump_posted = false;
                worker.timers.pump = None;
                worker.pump();
            }),
            heartbeat: handler(me, Worker::heartbeat),
            reconnect: handler(me, |worker| {
                worker.timers.reconnect = None;
                if worker.running {
                    worker.connect();
                }
            }),
            status: handler(me, |worker| {
                worker.timers.status = None;
                worker.post_status();
            }),
        }
    }
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks").finish_non_exhaustive()
    }
}

/// A closure running `action` on the worker, if it still exists and is not busy.
fn handler(
    me: &Weak<RefCell<Worker>>,
    action: impl Fn(&mut Worker) + 'static,
) -> Closure<dyn FnMut()> {
    let me = me.clone();
    Closure::new(move || {
        if let Some(shared) = me.upgrade()
            && let Ok(mut worker) = shared.try_borrow_mut()
        {
            action(&mut worker);
        }
    })
}

/// Timer handles, to cancel them.
#[derive(Debug, Default)]
struct Timers {
    /// The pending idle pause of the duty cycle.
    pump: Option<JsValue>,
    /// The heartbeat interval of the current session.
    heartbeat: Option<JsValue>,
    /// The pending reconnect.
    reconnect: Option<JsValue>,
    /// The pending progress post.
    status: Option<JsValue>,
}

/// One socket, its handlers and its session (once open).
struct Link {
    /// The socket.
    socket: WebSocket,
    /// The protocol state; `None` until the socket opens and the hello is sent.
    session: Option<Session>,
    /// Handlers of this socket, detached when the link is dropped.
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Link {
    /// Open a socket to `url` whose events go to the worker behind `me`.
    fn open(url: &str, me: &Weak<RefCell<Worker>>) -> Result<Link, JsValue> {
        let socket = WebSocket::new(url)?;
        socket.set_binary_type(BinaryType::Arraybuffer);
        let on_open = handler(me, Worker::on_open);
        let on_message = {
            let me = me.clone();
            Closure::new(move |event: MessageEvent| {
                if let Some(shared) = me.upgrade()
                    && let Ok(mut worker) = shared.try_borrow_mut()
                {
                    worker.on_message(&event);
                }
            })
        };
        let on_close = {
            let me = me.clone();
            Closure::new(move |event: CloseEvent| {
                if let Some(shared) = me.upgrade()
                    && let Ok(mut worker) = shared.try_borrow_mut()
                {
                    worker.on_close(&event);
                }
            })
        };
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Link {
            socket,
            session: None,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    }

    /// Detach the handlers and close the socket (if not closed yet) with `code`.
    fn shut(&self, code: u16, reason: &str) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        if self.socket.ready_state() <= WebSocket::OPEN {
            let _ = self.socket.close_with_code_and_reason(code, reason);
        }
    }

    fn send(&self, text: &str) {
        // Fails only while connecting, when nothing is sent; a closed socket drops silently
        // and its close event ends the session.
        let _ = self.socket.send_with_str(text);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shut(CLOSE_NORMAL, "bye");
    }
}

/// The state of one browser worker.
struct Worker {
    /// The master's WebSocket URL.
    url: String,
    /// The volunteer's persistent identity.
    worker_id: String,
    /// The CPU-use setting.
    duty: DutyCycle,
    /// The page's status callback.
    on_status: js_sys::Function,
    /// Started and not paused (nor refused for good): keep a connection.
    running: bool,
    /// The current connection.
    link: Option<Link>,
    /// The previous connection, kept until the next one opens: a link is often ended from
    /// inside one of its own handlers, which must not be freed while it runs.
    retired: Option<Link>,
    /// Delays between connection attempts.
    backoff: Backoff,
    /// What the page was last told (and is told next).
    status: Status,
    /// When the status was last posted.
    last_post_ms: f64,
    /// Pending timers.
    timers: Timers,
    /// A zero-delay pump message is on its way.
    pump_posted: bool,
    /// Runs task-module chunks (shared with the future running the current one).
    modules: Rc<ModuleRunner>,
    /// The task-module chunk running asynchronously, if any.
    chunk: Option<RunningChunk>,
    /// The ticket of the next task-module chunk.
    next_ticket: u64,
    /// Compute time of the last chunk.
    last_compute_ms: f64,
    /// When the last chunk finished.
    last_chunk_end_ms: f64,
    /// No chunk starts before this (the duty cycle's idle pause).
    idle_until_ms: f64,
    /// Handlers living as long as the worker.
    callbacks: Callbacks,
    /// Port 1 runs the pump when port 2 posts to it.
    channel: MessageChannel,
    /// This worker, for handlers of new sockets.
    me: Weak<RefCell<Worker>>,
}

/// A task-module chunk started by the pump and not yet answered.
#[derive(Debug, Clone, Copy)]
struct RunningChunk {
    /// Unique per worker: tells this chunk's answer from a late answer of an abandoned one.
    ticket: u64,
    /// Its lease.
    lease: LeaseId,
    /// When it started (fetching and compiling count: the volunteer's thread waited for them).
    started_ms: f64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("url", &self.url)
            .field("worker_id", &self.worker_id)
            .field("running", &self.running)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Worker {
    fn start(&mut self) {
        if self.running {
            return;
        }
        self.running = true;
        self.backoff.reset();
        self.status.last_error = None;
        self.connect();
    }

    fn pause(&mut self) {
        self.running = false;
        if let Some(link) = &mut self.link
            && let Some(release) = link.session.as_mut().and_then(Session::release_all)
        {
            link.send(&release);
        }
        self.end_session(CLOSE_NORMAL, "paused", None);
        if let Some(timer) = self.timers.reconnect.take() {
            clear_timeout(&timer);
        }
        self.status.connection = Connection::Paused;
        self.status.retry_in_ms = None;
        self.post_status();
    }

    fn set_cpu_percent(&mut self, percent: u32) {
        self.duty = DutyCycle::new(percent);
        // Re-plan a pause in progress with the new setting.
        self.idle_until_ms = self.last_chunk_end_ms + self.duty.idle_after(self.last_compute_ms);
        if let Some(timer) = self.timers.pump.take() {
            clear_timeout(&timer);
            self.schedule_pump();
        }
    }

    fn connect(&mut self) {
        self.retired = None;
        match Link::open(&self.url, &self.me) {
            Ok(link) => {
                self.link = Some(link);
                self.status.connection = Connection::Connecting;
                self.status.retry_in_ms = None;
            }
            Err(error) => {
                // Only a malformed URL makes the constructor throw; retrying cannot help.
                self.running = false;
                self.status.connection = Connection::Failed;
                self.status.last_error = Some(format!(
                    "cannot open a WebSocket to {}: {}",
                    self.url,
                    error.as_string().unwrap_or_else(|| "invalid URL".into())
                ));
            }
        }
        self.post_status();
    }

    fn on_open(&mut self) {
        let Some(link) = &mut self.link else {
            return;
        };
        let (session, hello) = Session::start(&self.worker_id, 1);
        link.send(&hello);
        link.session = Some(session);
    }

    fn on_message(&mut self, event: &MessageEvent) {
        let Some(session) = self.link.as_mut().and_then(|link| link.session.as_mut()) else {
            return;
        };
        let reaction = match event.data().as_string() {
            Some(text) => session.on_text(&text),
            None => Err(SessionError::Malformed(
                "a binary frame; the protocol is JSON text".into(),
            )),
        };
        match reaction {
            Ok(Reaction::Nothing) => {}
            Ok(Reaction::Welcomed(welcome)) => {
                self.backoff.reset();
                let period = i32::try_from(welcome.heartbeat_ms).unwrap_or(i32::MAX);
                let callback = self.callbacks.heartbeat.as_ref().unchecked_ref();
                self.timers.heartbeat = Some(set_interval(callback, period));
                self.status.connection = Connection::Connected;
                self.status.last_error = None;
                self.post_status();
            }
            Ok(Reaction::WorkQueued) => self.schedule_pump(),
            Ok(Reaction::Reply(frame)) => {
                if let Some(link) = self.link.as_ref() {
                    link.send(&frame);
                }
            }
            Ok(Reaction::RunningRevoked) => {
                self.abandon_chunk();
                self.schedule_pump();
            }
            Err(error) => {
                let code = match error {
                    SessionError::Malformed(_) => CLOSE_MALFORMED,
                    _ => CLOSE_NORMAL,
                };
                let fatal = error.is_fatal();
                self.end_session(code, "session ended", Some(error.to_string()));
                if fatal {
                    self.running = false;
                    self.status.connection = Connection::Failed;
                    self.post_status();
                } else {
                    self.schedule_reconnect();
                }
            }
        }
    }

    fn on_close(&mut self, event: &CloseEvent) {
        let welcomed = self
            .link
            .as_ref()
            .and_then(|link| link.session.as_ref())
            .is_some_and(|session| session.welcome().is_some());
        let reason = event.reason();
        let why = match (welcomed, reason.is_empty()) {
            (false, _) => format!("cannot reach the master (close code {})", event.code()),
            (true, true) => format!("connection lost (close code {})", event.code()),
            (true, false) => format!("connection closed by the master: {reason}"),
        };
        self.end_session(CLOSE_NORMAL, "bye", Some(why));
        self.schedule_reconnect();
    }

    /// Forget the current connection: its queued work is dropped (the master takes the leases
    /// back when the socket closes), its timers stop, a running module chunk is stopped.
    fn end_session(&mut self, code: u16, reason: &str, error: Option<String>) {
        self.abandon_chunk();
        if let Some(link) = self.link.take() {
            link.shut(code, reason);
            self.retired = Some(link);
        }
        if let Some(timer) = self.timers.heartbeat.take() {
            clear_interval(&timer);
        }
        if let Some(timer) = self.timers.pump.take() {
            clear_timeout(&timer);
        }
        self.status.queued = 0;
        if error.is_some() {
            self.status.last_error = error;
        }
    }

    fn schedule_reconnect(&mut self) {
        if !self.running {
            return;
        }
        let delay = self
            .backoff
            .next_delay(js_sys::Math::random())
            .as_secs_f64()
            * 1000.0;
        if let Some(timer) = self.timers.reconnect.take() {
            clear_timeout(&timer);
        }
        let callback = self.callbacks.reconnect.as_ref().unchecked_ref();
        self.timers.reconnect = Some(set_timeout(callback, delay.ceil() as i32));
        self.status.connection = Connection::Reconnecting;
        self.status.retry_in_ms = Some(delay.round());
        self.post_status();
    }

    fn heartbeat(&mut self) {
        if let Some(link) = &self.link
            && let Some(frame) = link.session.as_ref().and_then(Session::heartbeat)
        {
            link.send(&frame);
        }
    }

    /// Run the pump when the duty cycle allows: at once (via the message channel, which lets
    /// socket events in first) or after the idle pause.
    fn schedule_pump(&mut self) {
        if self.pump_posted || self.timers.pump.is_some() {
            return;
        }
        let wait = self.idle_until_ms - performance_now();
        if wait > 0.0 {
            let callback = self.callbacks.pump.as_ref().unchecked_ref();
            self.timers.pump = Some(set_timeout(callback, wait.ceil() as i32));
        } else if self.channel.port2().post_message(&JsValue::NULL).is_ok() {
            self.pump_posted = true;
        }
    }

    /// Compute the next queued chunk, send its result, and plan the next one. A task-module
    /// chunk is only started here; [`Worker::module_done`] finishes it.
    fn pump(&mut self) {
        if !self.running || self.chunk.is_some() {
            return;
        }
        if performance_now() < self.idle_until_ms {
            self.schedule_pump();
            return;
        }
        let Some(link) = &mut self.link else {
            return;
        };
        let Some(session) = link.session.as_mut() else {
            return;
        };
        let Some(welcome) = session.welcome() else {
            return;
        };
        let Some(Assignment { lease, task, input }) = session.next_assignment() else {
            return;
        };
        match task {
            Task::Kernel { name } => {
                let started = performance_now();
                let outcome = run_kernel(&name, &input);
                let finished = performance_now();
                session.finish(lease);
                link.send(&result_frame(lease, outcome, welcome.max_message_bytes));
                self.chunk_sent(finished - started, finished);
            }
            Task::Module {
                id,
                timeout_ms,
                max_memory_mb,
                output,
            } => self.start_module(lease, &id, timeout_ms, max_memory_mb, output, input),
        }
    }

    /// Start a task-module chunk: a future runs it and delivers its end to
    /// [`Worker::module_done`] with this chunk's ticket.
    fn start_module(
        &mut self,
        lease: LeaseId,
        id: &str,
        timeout_ms: u32,
        max_memory_mb: u32,
        output: grid_protocol::OutputMode,
        input: serde_json::Value,
    ) {
        let task = match ModuleTask::new(id, timeout_ms, max_memory_mb) {
            Ok(task) => task.with_output(output),
            Err(why) => return self.give_back(lease, why),
        };
        let Some(url) = module_url(&self.url, &task.id) else {
            let why = format!("no HTTP address for the master at {}", self.url);
            return self.give_back(lease, Unrunnable(why));
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.chunk = Some(RunningChunk {
            ticket,
            lease,
            started_ms: performance_now(),
        });
        let runner = Rc::clone(&self.modules);
        let me = self.me.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let still_wanted = || chunk_is_running(&me, ticket);
            let end = runner.run(&url, &task, &input, still_wanted).await;
            deliver(&me, ticket, end).await;
        });
        self.status.queued = self.queued();
        self.post_progress();
    }

    /// The end of the task-module chunk of `ticket`: send its result or give it back, unless
    /// it was abandoned meanwhile.
    fn module_done(&mut self, ticket: u64, end: ChunkEnd) {
        let Some(chunk) = self.chunk.take_if(|chunk| chunk.ticket == ticket) else {
            return;
        };
        match end {
            ChunkEnd::Outcome(outcome) => {
                let finished = performance_now();
                let mut sent = false;
                if let Some(link) = &mut self.link
                    && let Some(session) = link.session.as_mut()
                    && session.finish(chunk.lease)
                {
                    let limit = session.welcome().and_then(|w| w.max_message_bytes);
                    link.send(&result_frame(chunk.lease, outcome, limit));
                    sent = true;
                }
                if sent {
                    self.chunk_sent(finished - chunk.started_ms, finished);
                } else {
                    self.after_chunk();
                }
            }
            ChunkEnd::GiveBack(why) => self.give_back(chunk.lease, why),
        }
    }

    /// Stop the running task-module chunk: its answer will be dropped.
    fn abandon_chunk(&mut self) {
        if self.chunk.take().is_some() {
            self.modules.cancel();
        }
    }

    /// Hand the running chunk of `lease` back to the master (this worker cannot compute it),
    /// say why, and pause a moment before the next one.
    fn give_back(&mut self, lease: LeaseId, why: Unrunnable) {
        if let Some(link) = &mut self.link
            && let Some(frame) = link.session.as_mut().and_then(|s| s.give_back(lease))
        {
            link.send(&frame);
        }
        web_sys::console::warn_1(&JsValue::from_str(&format!(
            "grid worker: gave lease {lease} back: {why}"
        )));
        self.status.last_error = Some(why.0);
        self.idle_until_ms = performance_now() + GIVE_BACK_PAUSE_MS;
        self.after_chunk();
    }

    /// A result was sent: account for it and pace the next chunk.
    fn chunk_sent(&mut self, elapsed: f64, finished: f64) {
        self.last_compute_ms = elapsed;
        self.last_chunk_end_ms = finished;
        self.idle_until_ms = finished + self.duty.idle_after(elapsed);
        self.status.chunks_done += 1;
        self.status.compute_ms += elapsed;
        self.after_chunk();
    }

    /// Report progress and go on with the queue.
    fn after_chunk(&mut self) {
        let queued = self.queued();
        self.status.queued = queued;
        self.post_progress();
        if queued > 0 {
            self.schedule_pump();
        }
    }

    /// Assignments waiting in the current session.
    fn queued(&self) -> usize {
        self.link
            .as_ref()
            .and_then(|link| link.session.as_ref())
            .map_or(0, Session::queued)
    }

    /// Tell the page about progress, at most every [`STATUS_INTERVAL_MS`]; what is held back
    /// is posted when the interval ends.
    fn post_progress(&mut self) {
        if self.timers.status.is_some() {
            return;
        }
        let wait = self.last_post_ms + STATUS_INTERVAL_MS - performance_now();
        if wait <= 0.0 {
            self.post_status();
        } else {
            let callback = self.callbacks.status.as_ref().unchecked_ref();
            self.timers.status = Some(set_timeout(callback, wait.ceil() as i32));
        }
    }

    /// Tell the page the current status now.
    fn post_status(&mut self) {
        if let Some(timer) = self.timers.status.take() {
            clear_timeout(&timer);
        }
        self.last_post_ms = performance_now();
        let status = js_sys::JSON::parse(&self.status.to_json()).unwrap_or(JsValue::NULL);
        if let Err(error) = self.on_status.call1(&JsValue::NULL, &status) {
            web_sys::console::error_2(
                &JsValue::from_str("grid worker: status callback failed"),
                &error,
            );
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let timers = std::mem::take(&mut self.timers);
        for timer in [timers.pump, timers.reconnect, timers.status]
            .into_iter()
            .flatten()
        {
            clear_timeout(&timer);
        }
        if let Some(timer) = timers.heartbeat {
            clear_interval(&timer);
        }
        self.channel.port1().set_onmessage(None);
        self.channel.port1().close();
        self.modules.cancel();
    }
}

/// Whether the task-module chunk of `ticket` is still the running one.
fn chunk_is_running(me: &Weak<RefCell<Worker>>, ticket: u64) -> bool {
    me.upgrade().is_some_and(|shared| {
        // Futures resume from the microtask queue, when no handler holds the worker; if one
        // did, carrying on is the safe guess (the answer is checked again on delivery).
        shared.try_borrow().map_or(true, |worker| {
            worker.chunk.is_some_and(|chunk| chunk.ticket == ticket)
        })
    })
}

/// Hand the end of the task-module chunk of `ticket` to the worker, if it still exists.
async fn deliver(me: &Weak<RefCell<Worker>>, ticket: u64, end: ChunkEnd) {
    loop {
        let Some(shared) = me.upgrade() else {
            return;
        };
        if let Ok(mut worker) = shared.try_borrow_mut() {
            worker.module_done(ticket, end);
            return;
        }
        drop(shared);
        // Not expected (see `chunk_is_running`), but an answer must never be lost: a lost
        // answer would keep the slot busy for good. Try again on the next task.
        let tick = js_sys::Promise::new(&mut |resolve, _| {
            set_timeout(&resolve, 0);
        });
        let _ = JsFuture::from(tick).await;
    }
}
