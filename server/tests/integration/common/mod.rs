//! Helpers of the master's integration tests: the shared fixtures of `grid-test-support`
//! (databases, masters in-process and as processes, workers, the REST client), and what only
//! these tests need: [`on_both_backends!`], a protocol-speaking test [`Peer`] that can also
//! send what no real worker would, task modules written in WebAssembly text ([`modules`]) and
//! simulated volunteers ([`volunteers`]).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use grid_protocol::{MasterMessage, PROTOCOL_VERSION, WorkerKind, WorkerMessage};
pub use grid_test_support::*;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod volunteers;

/// Generate one `#[tokio::test]` per backend for each `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::Backend::Postgres).await
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::Backend::Sqlite).await
            })*
        }
    };
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A hand-driven protocol peer.
pub struct Peer {
    pub socket: Socket,
}

impl Peer {
    pub async fn connect(ws_url: &str) -> Peer {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        Peer { socket }
    }

    /// Connect from a given local address (any 127.x.y.z on loopback), so one machine can
    /// act as many networks.
    pub async fn connect_from(ws_url: &str, source: std::net::IpAddr) -> Peer {
        let url = url::Url::parse(ws_url).unwrap();
        let target: SocketAddr = format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )
        .parse()
        .unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = socket.connect(target).await.unwrap();
        let (socket, _) = tokio_tungstenite::client_async(ws_url, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        Peer { socket }
    }

    /// Connect and complete the hello.
    pub async fn join(ws_url: &str, worker_id: &str, slots: u32) -> Peer {
        let peer = Peer::connect(ws_url).await;
        peer.hello(worker_id, slots, WorkerKind::Native).await
    }

    /// Connect from `source` and complete the hello.
    pub async fn join_from(
        ws_url: &str,
        source: std::net::IpAddr,
        worker_id: &str,
        slots: u32,
    ) -> Peer {
        Peer::join_from_as(ws_url, source, worker_id, slots, WorkerKind::Native).await
    }

    /// Connect from `source` as a worker of `kind` and complete the hello.
    pub async fn join_from_as(
        ws_url: &str,
        source: std::net::IpAddr,
        worker_id: &str,
        slots: u32,
        kind: WorkerKind,
    ) -> Peer {
        let peer = Peer::connect_from(ws_url, source).await;
        peer.hello(worker_id, slots, kind).await
    }

    async fn hello(self, worker_id: &str, slots: u32, kind: WorkerKind) -> Peer {
        let mut peer = self;
        peer.send(&WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            worker_id: worker_id.into(),
            slots,
            kind,
            work: None,
        })
        .await;
        match peer.recv().await {
            Some(MasterMessage::Welcome { .. }) => peer,
            // A master with --hello-work-bits: pay, as a real worker does.
            Some(MasterMessage::Challenge { seed, bits }) => {
                peer.send(&WorkerMessage::Hello {
                    protocol: PROTOCOL_VERSION,
                    worker_id: worker_id.into(),
                    slots,
                    kind,
                    work: Some(grid_protocol::work::solve(&seed, worker_id, bits)),
                })
                .await;
                match peer.recv().await {
                    Some(MasterMessage::Welcome { .. }) => peer,
                    other => panic!("expected welcome after the proof of work, got {other:?}"),
                }
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: &WorkerMessage) {
        self.send_text(&grid_protocol::to_json(message)).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next protocol message, or None when the connection closed. Bounded by 20 s.
    pub async fn recv(&mut self) -> Option<MasterMessage> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
                .await
                .expect("no message from the master within 20 s");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Some(MasterMessage::from_json(&text).unwrap());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The close frame's code, after reading any messages before it.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
                .await
                .expect("the master did not close within 20 s");
            match frame {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Next assignment (skipping other messages).
    pub async fn next_assignment(&mut self) -> (i64, Value) {
        loop {
            match self.recv().await {
                Some(MasterMessage::Assign { lease, input, .. }) => return (lease, input),
                Some(_) => continue,
                None => panic!("connection closed while waiting for an assignment"),
            }
        }
    }
}

/// Task modules for the tests, written in WebAssembly text and assembled here, and the
/// example modules `cargo xtask` builds.
pub mod modules {
    /// An example module built by `cargo xtask modules` (`cargo xtask test` builds them) into
    /// `<target dir>/task-modules/<name>.wasm`.
    pub fn example(name: &str) -> Vec<u8> {
        // Test executables live in <target>/<profile>/deps.
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap();
        let path = target.join("task-modules").join(format!("{name}.wasm"));
        std::fs::read(&path).unwrap_or_else(|error| {
            panic!(
                "{} cannot be read ({error}): build the example modules with \
                 `cargo xtask modules` (cargo xtask test does)",
                path.display()
            )
        })
    }

    /// A module following the ABI whose `grid_run` body is `run` (locals: `$ptr`, `$len`);
    /// `grid_alloc` hands out memory from offset 1024.
    pub fn abi_module(run: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 (memory (export "memory") 1)
                 (func (export "grid_alloc") (param $len i32) (result i32) i32.const 1024)
                 (func (export "grid_run") (param $ptr i32) (param $len i32) (result i64)
                   {run}))"#
        ))
        .unwrap()
    }

    /// Returns its input unchanged (the input is JSON, so the output is too).
    pub fn echo() -> Vec<u8> {
        abi_module(
            "(i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                     (i64.extend_i32_u (local.get $len)))",
        )
    }

    /// Never returns.
    pub fn endless_loop() -> Vec<u8> {
        abi_module("(loop $forever (br $forever)) (unreachable)")
    }

    /// Grows its memory a page at a time until a grow fails, then aborts (what a Rust module
    /// does when its allocator runs out).
    pub fn memory_hog() -> Vec<u8> {
        abi_module(
            "(block $full
               (loop $more
                 (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                 (br $more)))
             (unreachable)",
        )
    }

    /// The table bomb of the security review (H9) with four tables (the most the ABI allows)
    /// of ten million funcrefs, which `grid_run` fills; with `grow`, the tables start with one
    /// element and `grid_run` first tries to grow each to ten million.
    pub fn table_bomb(grow: bool) -> Vec<u8> {
        let initial = if grow { 1 } else { 10_000_000 };
        let mut tables = String::new();
        let mut fills = String::new();
        for i in 0..4 {
            tables.push_str(&format!("(table $t{i} {initial} funcref)"));
            if grow {
                fills.push_str(&format!(
                    "(drop (table.grow $t{i} (ref.null func) (i32.const 9999999)))"
                ));
            }
            fills.push_str(&format!(
                "(table.fill $t{i} (i32.const 0) (ref.func $f) (i32.const 10000000))"
            ));
        }
        wat::parse_str(format!(
            r#"(module
                 (memory (export "memory") 1)
                 {tables}
                 (func $f) (elem declare func $f)
                 (func (export "grid_alloc") (param i32) (result i32) (i32.const 1024))
                 (func (export "grid_run") (param i32 i32) (result i64)
                   {fills}
                   (i32.store8 (i32.const 0) (i32.const 48))
                   (i64.const 1)))"#
        ))
        .unwrap()
    }

    /// Traps at once.
    pub fn trap() -> Vec<u8> {
        abi_module("(unreachable)")
    }

    /// Imports a host function: refused at upload.
    pub fn with_import() -> Vec<u8> {
        wat::parse_str(
            r#"(module (import "env" "now" (func $now (result i64)))
                 (memory (export "memory") 1)
                 (func (export "grid_alloc") (param i32) (result i32) i32.const 0)
                 (func (export "grid_run") (param i32 i32) (result i64) call $now))"#,
        )
        .unwrap()
    }
}
