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
//! The protocol logic is in [`crate::session`]; here is only the plumbing.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageChannel, MessageEvent, WebSocket};

use crate::backoff::Backoff;
use crate::compute::result_frame;
use crate::duty_cycle::DutyCycle;
use crate::session::{Reaction, Session, SessionError};
use crate::status::{Connection, Status};

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
    /// object (see [`Status`]) whenever something changes. Not connected until [`Self::start`].
    #[wasm_bindgen(constructor)]
    pub fn new(
        url: String,
        worker_id: String,
        cpu_percent: u32,
        on_status: js_sys::Function,
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
    /// Kernel time of the last chunk.
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
    /// back when the socket closes), its timers stop.
    fn end_session(&mut self, code: u16, reason: &str, error: Option<String>) {
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
        let delay = self.backoff.next_delay_ms(js_sys::Math::random());
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

    /// Compute the next queued chunk, send its result, and plan the next one.
    fn pump(&mut self) {
        if !self.running {
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
        let Some(assignment) = session.next_assignment() else {
            return;
        };
        let started = performance_now();
        let frame = result_frame(&assignment, welcome.max_message_bytes);
        let finished = performance_now();
        let queued = session.queued();
        link.send(&frame);

        let elapsed = finished - started;
        self.last_compute_ms = elapsed;
        self.last_chunk_end_ms = finished;
        self.idle_until_ms = finished + self.duty.idle_after(elapsed);
        self.status.chunks_done += 1;
        self.status.compute_ms += elapsed;
        self.status.queued = queued;
        self.post_progress();
        if queued > 0 {
            self.schedule_pump();
        }
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
    }
}
