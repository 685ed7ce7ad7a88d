//! A tiny fake master for the worker's integration tests, on `127.0.0.1:0`: WebSocket
//! sessions (tokio-tungstenite) that the test drives message by message, and the module
//! download endpoint (`GET /api/v1/modules/{id}`) on the same port, as the real master has.
//!
//! One acceptor task reads each connection's HTTP request head: module downloads are answered
//! there, WebSocket upgrades are completed and handed to [`FakeMaster::accept`].

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use grid_protocol::{MasterMessage, PROTOCOL_VERSION, WorkerKind, WorkerMessage, to_json};
use grid_worker::{WorkerConfig, WorkerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use url::Url;

/// Upper bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// Await `future`, failing the test if it takes longer than [`WAIT`].
pub async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A listening fake master.
#[derive(Debug)]
pub struct FakeMaster {
    /// Upgraded WebSocket connections, in arrival order.
    upgraded: tokio::sync::Mutex<mpsc::UnboundedReceiver<TcpStream>>,
    /// What the HTTP side serves.
    http: Arc<HttpSide>,
    /// Accepts connections until the master is dropped.
    acceptor: JoinHandle<()>,
}

/// The module endpoint's state.
#[derive(Debug)]
struct HttpSide {
    /// Module bytes by the id they are served under.
    modules: Mutex<HashMap<String, Vec<u8>>>,
    /// Module requests answered (any status).
    requests: AtomicUsize,
    /// While `false`, module requests wait before being answered.
    open: watch::Sender<bool>,
}

impl FakeMaster {
    /// Bind `127.0.0.1:0`; the worker can connect as soon as this returns.
    pub async fn bind() -> (Self, Url) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("ws://{}/ws", listener.local_addr().unwrap())).unwrap();
        let http = Arc::new(HttpSide {
            modules: Mutex::new(HashMap::new()),
            requests: AtomicUsize::new(0),
            open: watch::Sender::new(true),
        });
        let (upgrades, upgraded) = mpsc::unbounded_channel();
        let acceptor = tokio::spawn(accept_connections(listener, Arc::clone(&http), upgrades));
        let master = FakeMaster {
            upgraded: tokio::sync::Mutex::new(upgraded),
            http,
            acceptor,
        };
        (master, url)
    }

    /// Accept the next worker connection.
    pub async fn accept(&self) -> Connection {
        let mut upgraded = self.upgraded.lock().await;
        let tcp = bounded("a connection", upgraded.recv()).await.unwrap();
        let socket = WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
        Connection { socket }
    }

    /// Serve `bytes` as a module under their real id; returns the id.
    pub fn serve_module(&self, bytes: &[u8]) -> String {
        let id = grid_task_abi::module_id(bytes);
        self.serve_as(&id, bytes);
        id
    }

    /// Serve `bytes` under `id`, whether or not they hash to it.
    pub fn serve_as(&self, id: &str, bytes: &[u8]) {
        self.http
            .modules
            .lock()
            .unwrap()
            .insert(id.to_owned(), bytes.to_vec());
    }

    /// Module requests answered so far.
    pub fn module_requests(&self) -> usize {
        self.http.requests.load(Ordering::SeqCst)
    }

    /// Hold module requests (`false`) until released (`true`).
    pub fn answer_module_requests(&self, open: bool) {
        self.http.open.send_replace(open);
    }
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Read each connection's request head; answer module downloads, pass upgrades on.
async fn accept_connections(
    listener: TcpListener,
    http: Arc<HttpSide>,
    upgrades: mpsc::UnboundedSender<TcpStream>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (http, upgrades) = (Arc::clone(&http), upgrades.clone());
        tokio::spawn(async move {
            let mut tcp = tcp;
            let Some(head) = read_head(&mut tcp).await else {
                return;
            };
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            let key = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            });
            if let Some(id) = path.strip_prefix("/api/v1/modules/") {
                serve_module(&mut tcp, &http, id).await;
            } else if let Some(key) = key {
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                if tcp.write_all(response.as_bytes()).await.is_ok() {
                    let _ = upgrades.send(tcp);
                }
            } else {
                let _ = tcp
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
    }
}

/// The request head (up to the blank line), read a byte at a time so nothing after it is
/// consumed.
async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return None;
        }
        head.push(tcp.read_u8().await.ok()?);
    }
    String::from_utf8(head).ok()
}

/// Answer `GET /api/v1/modules/{id}` the way the master does: the bytes, or a JSON 404.
async fn serve_module(tcp: &mut TcpStream, http: &HttpSide, id: &str) {
    let mut open = http.open.subscribe();
    let _ = open.wait_for(|open| *open).await;
    let bytes = http.modules.lock().unwrap().get(id).cloned();
    let (status, kind, body) = match bytes {
        Some(bytes) => ("200 OK", "application/wasm", bytes),
        None => (
            "404 Not Found",
            "application/json",
            br#"{"error":"not_found","message":"no such module"}"#.to_vec(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: public, max-age=31536000, immutable\r\nConnection: close\r\n\r\n",
        body.len()
    );
    http.requests.fetch_add(1, Ordering::SeqCst);
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(&body).await;
    let _ = tcp.shutdown().await;
}

/// One accepted worker connection, seen from the master.
#[derive(Debug)]
pub struct Connection {
    socket: WebSocketStream<TcpStream>,
}

impl Connection {
    /// Send a protocol message.
    pub async fn send(&mut self, message: &MasterMessage) {
        self.send_frame(Message::text(to_json(message))).await;
    }

    /// Send any frame.
    pub async fn send_frame(&mut self, frame: Message) {
        bounded("sending", self.socket.send(frame)).await.unwrap();
    }

    /// The next frame, `None` once the connection has ended.
    pub async fn next_frame(&mut self) -> Option<Message> {
        match bounded("a frame", self.socket.next()).await {
            Some(Ok(frame)) => Some(frame),
            Some(Err(_)) | None => None,
        }
    }

    /// The next protocol message other than a heartbeat; panics on anything else.
    pub async fn recv(&mut self) -> WorkerMessage {
        loop {
            match self.next_frame().await {
                Some(Message::Text(text)) => match WorkerMessage::from_json(&text).unwrap() {
                    WorkerMessage::Heartbeat => continue,
                    message => return message,
                },
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a worker message, got {other:?}"),
            }
        }
    }

    /// Expect a close frame with `code`, then answer it (reading does) until the connection
    /// ends.
    pub async fn expect_close(&mut self, code: CloseCode) {
        match self.next_frame().await {
            Some(Message::Close(frame)) => assert_eq!(frame.map(|f| f.code), Some(code)),
            other => panic!("expected a close, got {other:?}"),
        }
        assert_eq!(self.next_frame().await, None);
    }

    /// Expect a hello; returns the worker id and slots.
    pub async fn expect_hello(&mut self) -> (String, u32) {
        match self.recv().await {
            WorkerMessage::Hello {
                protocol,
                worker_id,
                slots,
                kind,
                ..
            } => {
                assert_eq!(protocol, PROTOCOL_VERSION);
                assert_eq!(kind, WorkerKind::Native);
                (worker_id, slots)
            }
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    /// Welcome the worker, with heartbeats rare enough to stay out of the way.
    pub async fn welcome(&mut self) {
        self.send(&MasterMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_seconds: 300,
            max_message_bytes: 1 << 20,
            masters: Vec::new(),
        })
        .await;
    }

    /// Ping the worker and wait for the pong. The worker reads frames in order, so once the
    /// pong is back it has handled everything sent before the ping. Returns the messages that
    /// arrived meanwhile.
    pub async fn sync(&mut self) -> Vec<WorkerMessage> {
        self.send_frame(Message::Ping("sync".into())).await;
        let mut before = Vec::new();
        loop {
            match self.next_frame().await {
                Some(Message::Pong(payload)) if &payload[..] == b"sync" => return before,
                Some(Message::Text(text)) => match WorkerMessage::from_json(&text).unwrap() {
                    WorkerMessage::Heartbeat => {}
                    message => before.push(message),
                },
                Some(Message::Ping(_) | Message::Pong(_)) => {}
                other => panic!("expected the pong, got {other:?}"),
            }
        }
    }
}

/// A worker running [`grid_worker::run`] in the background.
#[derive(Debug)]
pub struct RunningWorker {
    /// Completes the worker's shutdown future.
    shutdown: Option<oneshot::Sender<()>>,
    /// The `run` task.
    task: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Start a worker for `servers` with `threads` compute threads and quick reconnects.
    pub fn spawn(servers: Vec<Url>, worker_id: &str, threads: u32) -> Self {
        let mut config = WorkerConfig::new(servers, worker_id);
        config.threads = threads;
        config.reconnect_initial = Duration::from_millis(10);
        config.reconnect_max = Duration::from_millis(100);
        RunningWorker::spawn_with(config)
    }

    /// Start a worker with `config`.
    pub fn spawn_with(config: WorkerConfig) -> Self {
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(grid_worker::run(config, async move {
            let _ = signal.await;
        }));
        RunningWorker {
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Request a graceful shutdown.
    pub fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Wait for `run` to return.
    pub async fn finished(self) -> Result<(), WorkerError> {
        bounded("the worker to stop", self.task).await.unwrap()
    }
}
