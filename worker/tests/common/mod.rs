//! A tiny fake master for the worker's integration tests: a tokio-tungstenite server on
//! `127.0.0.1:0` that the test drives message by message.

#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use grid_protocol::{MasterMessage, PROTOCOL_VERSION, WorkerKind, WorkerMessage, to_json};
use grid_worker::{WorkerConfig, WorkerError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
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
    listener: TcpListener,
}

impl FakeMaster {
    /// Bind `127.0.0.1:0`; the worker can connect as soon as this returns.
    pub async fn bind() -> (Self, Url) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("ws://{}/ws", listener.local_addr().unwrap())).unwrap();
        (FakeMaster { listener }, url)
    }

    /// Accept the next worker connection.
    pub async fn accept(&self) -> Connection {
        let (tcp, _) = bounded("a connection", self.listener.accept())
            .await
            .unwrap();
        let socket = bounded("the handshake", tokio_tungstenite::accept_async(tcp))
            .await
            .unwrap();
        Connection { socket }
    }
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
