//! Issue 19, "bounded everything", over real sockets: the header-read timeout against
//! slow-loris connections, connection and session caps, a worker that does not read, per-route
//! body limits, and a shutdown that does not wait for half-sent requests.
//!
//! Every test targets 127.0.0.0/8 only and bounds its own time.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Api, Backend, Home, InProcessServer, Peer, spawn_server_process_with};
use futures_util::{SinkExt, StreamExt};
use grid_protocol::{MasterMessage, PROTOCOL_VERSION, WorkerKind, WorkerMessage};
use grid_server::ServeOptions;
use grid_server::limits::Limits;
use grid_server::network::NetworkPolicy;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The tests that load the machine (thousands of sockets, a flood) take turns, so that one's
/// load does not show up in the other's latency figures.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Options where no network is trusted: loopback peers get the per-peer caps (127.x.y.z
/// addresses make distinct peers and /24 networks).
fn untrusted(limits: Limits) -> ServeOptions {
    ServeOptions {
        limits,
        networks: NetworkPolicy::parse("24,48", "", "").unwrap(),
        ..ServeOptions::default()
    }
}

/// A TCP connection to `addr` from the local address `source`.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .expect("connect within 5 s")
        .unwrap()
}

/// Send a GET for `path` on `stream` (keeping it open) and read the response's first bytes.
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

/// `GET /healthz` on a fresh connection; how long it took.
async fn healthz(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    started.elapsed()
}

/// (a) 3,000 slow-loris connections (a request line, then one header line every 2 s) against a
/// 3 s header timeout: the master closes every one of them in time, and `/healthz` keeps
/// answering within a second on separate connections meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_closed_by_the_header_timeout() {
    const CONNECTIONS: usize = 3_000;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
    let _turn = HEAVY.lock().await;
    // The attacking ends live in this process (the master raises its own limit).
    let limit = rlimit::increase_nofile_limit(CONNECTIONS as u64 + 512).unwrap();
    assert!(
        limit >= CONNECTIONS as u64 + 256,
        "the open-file limit is {limit}; this test needs {}",
        CONNECTIONS + 256
    );
    // The master in a process of its own, as deployed: its accept loop does not share a runtime
    // with the 3,000 attacking tasks.
    let home = Home::new(Backend::Sqlite).await;
    let (mut master, addr) = spawn_server_process_with(
        &home,
        "127.0.0.1:0",
        &[
            "--header-timeout-secs",
            &HEADER_TIMEOUT.as_secs().to_string(),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut worst = Duration::ZERO;
            let mut probes = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let took = tokio::time::timeout(Duration::from_secs(5), healthz(addr))
                    .await
                    .expect("/healthz did not answer within 5 s during the attack");
                worst = worst.max(took);
                probes += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (worst, probes)
        }
    });

    let attack_started = Instant::now();
    let mut attackers = tokio::task::JoinSet::new();
    // At most 256 handshakes at a time: 3,000 at once overflow the listen backlog (1,024) and
    // the kernel drops SYNs, the probes' too (a 1 s retransmission), whatever the master does.
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    for _ in 0..CONNECTIONS {
        let connecting = connecting.clone();
        attackers.spawn(async move {
            let handshake = connecting.acquire_owned().await.unwrap();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let opened = Instant::now();
            drop(handshake);
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            let mut buffer = [0u8; 1024];
            let mut next_line = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                tokio::select! {
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => return opened.elapsed(),
                        Ok(_) => {} // an answer (408) before the close
                    },
                    () = tokio::time::sleep_until(next_line) => {
                        if stream.write_all(b"X-a: b\r\n").await.is_err() {
                            return opened.elapsed();
                        }
                        next_line += Duration::from_secs(2);
                    }
                }
            }
        });
    }
    let mut lifetimes = Vec::with_capacity(CONNECTIONS);
    let all_closed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(lifetime) = attackers.join_next().await {
            lifetimes.push(lifetime.unwrap());
        }
    })
    .await;
    let attack = attack_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (worst_healthz, probes) = prober.await.unwrap();
    assert!(
        all_closed.is_ok(),
        "some slow-loris connections stayed open for 60 s"
    );
    lifetimes.sort();
    let longest = *lifetimes.last().unwrap();
    let shortest = lifetimes[0];
    println!(
        "{CONNECTIONS} slow-loris connections: all closed {attack:?} after the first opened; \
         each lived {shortest:?} to {longest:?} (median {:?}); /healthz worst {worst_healthz:?} \
         over {probes} probes",
        lifetimes[lifetimes.len() / 2]
    );
    assert_eq!(lifetimes.len(), CONNECTIONS);
    assert!(
        shortest >= HEADER_TIMEOUT - Duration::from_millis(500),
        "a connection closed after {shortest:?}, before the header timeout"
    );
    assert!(
        longest <= HEADER_TIMEOUT + Duration::from_secs(2),
        "a connection lived {longest:?}, beyond the header timeout plus 2 s"
    );
    assert!(probes >= 5, "only {probes} health probes ran");
    assert!(
        worst_healthz < Duration::from_secs(1),
        "/healthz took {worst_healthz:?} during the attack"
    );
    master.kill();
}

/// The frames a peer receives until the master closes: `(rejected, error codes, close frame)`.
async fn read_to_close(peer: &mut Peer) -> (usize, Vec<String>, Option<(u16, String)>) {
    let mut rejected = 0;
    let mut errors = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), peer.socket.next())
            .await
            .expect("the master neither wrote nor closed for 30 s");
        match frame {
            Some(Ok(Message::Text(text))) => match MasterMessage::from_json(&text).unwrap() {
                MasterMessage::Rejected { .. } => rejected += 1,
                MasterMessage::Error { code, .. } => errors.push(code),
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                let close = frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()));
                return (rejected, errors, close);
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (rejected, errors, None),
        }
    }
}

fn bogus_result(lease: i64) -> Message {
    Message::Text(
        json!({"type": "result", "lease": lease, "outcome": {"ok": 0}})
            .to_string()
            .into(),
    )
}

/// (b) A peer that does not read and floods results for leases it does not hold: past 64
/// refusals the master closes it (`too_many_refusals`), having queued at most 64 answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bogus_results_ends_the_session() {
    let server = InProcessServer::start(Backend::Sqlite).await;
    let mut peer = Peer::join(&server.ws(), "flood-1", 1).await;
    for lease in 0..500 {
        // The master stops reading once it closes: later sends may fail, which is fine.
        if peer
            .socket
            .feed(bogus_result(1 << 40 | lease))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = peer.socket.flush().await;
    let (rejected, errors, close) = read_to_close(&mut peer).await;
    assert!(rejected <= 64, "{rejected} refusals queued");
    assert_eq!(errors, ["too_many_refusals"]);
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, u16::from(CloseCode::Policy));
    assert!(reason.contains("does not hold"), "{reason}");
    // The master is fine: a new worker joins.
    let _ = Peer::join(&server.ws(), "honest-1", 1).await;
    server.stop().await;
}

/// A worker with a small receive buffer (so the master's writes stall early) that has said
/// hello.
async fn deaf_peer(server: &InProcessServer, worker_id: &str) -> Peer {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (socket, _) = tokio_tungstenite::client_async(
        server.ws(),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut peer = Peer { socket };
    peer.send(&WorkerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        worker_id: worker_id.into(),
        slots: 1,
        kind: WorkerKind::Native,
        work: None,
    })
    .await;
    assert!(matches!(
        peer.recv().await,
        Some(MasterMessage::Welcome { .. })
    ));
    peer
}

/// Flood bogus results without reading until the master stops taking them (it stops reading
/// once it has ended the session), at most 2,000,000 or 60 s: how many, and how long.
async fn flood_until_stalled(peer: &mut Peer) -> (i64, Duration) {
    let flood = Instant::now();
    let mut sent = 0i64;
    'flood: while sent < 2_000_000 && flood.elapsed() < Duration::from_secs(60) {
        for _ in 0..1_000 {
            if peer
                .socket
                .feed(bogus_result(1 << 40 | sent))
                .await
                .is_err()
            {
                break 'flood;
            }
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(2), peer.socket.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    (sent, flood.elapsed())
}

/// Sessions the master has closed as `slow_reader` (its Prometheus counter; one recorder serves
/// every master of this test process, and the tests that make slow readers take turns).
async fn slow_reader_closes(server: &InProcessServer) -> f64 {
    common::metric_sum(
        &server.http(),
        r#"grid_sessions_closed_total{reason="slow_reader"} "#,
    )
    .await
}

/// (b) A peer that stops reading while its answers pile up: the outbox fills and the session
/// ends (`slow_reader`) instead of the queue growing; the master stays responsive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_read_is_closed() {
    let _turn = HEAVY.lock().await;
    let limits = Limits {
        // More than one scheduler round can queue (8,192): the outbox fills only once the
        // socket stalls.
        ws_outbox_messages: 10_000,
        ws_max_refusals: u32::MAX,
        ws_messages_per_second: 10_000_000,
        ws_message_burst: 10_000_000,
        // Long enough for this test to start reading again and see why it was closed.
        ws_write_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let server = InProcessServer::start_with(Backend::Sqlite, limits).await;
    let closed_before = slow_reader_closes(&server).await;
    let mut peer = deaf_peer(&server, "deaf-1").await;
    let (sent, took) = flood_until_stalled(&mut peer).await;
    let (rejected, errors, close) = read_to_close(&mut peer).await;
    println!(
        "deaf worker: sent {sent} bogus results in {took:?}, read {rejected} refusals before the \
         close ({close:?})"
    );
    assert!(
        (rejected as i64) < sent,
        "every one of the {sent} results was answered"
    );
    // The master ended the session as `slow_reader` either way.
    assert!(slow_reader_closes(&server).await > closed_before);
    match close {
        Some((code, reason)) => {
            assert_eq!(errors, ["slow_reader"]);
            assert_eq!(code, u16::from(CloseCode::Policy));
            assert_eq!(reason, "the worker does not read its messages");
        }
        // A peer still sending more than the master's bounded closing linger can drain (on a
        // loaded machine the flood grows: 397,000 frames once, against about 100,000 alone)
        // sees its connection reset instead: the error and the close frame were sent, but a
        // socket closed with unread data resets, and the reset drops what the peer had not
        // read yet. The master never waits longer for a peer that does not read.
        None => assert!(errors.is_empty() || errors == ["slow_reader"], "{errors:?}"),
    }
    // The scheduler never waited on the deaf session: the master still answers.
    assert!(healthz(server.addr).await < Duration::from_secs(1));
    let _ = Peer::join(&server.ws(), "honest-2", 1).await;
    server.stop().await;
}

/// (c) From a non-trusted address, connection number cap+1 is refused at once, while another
/// address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    const CAP: usize = 4;
    let server = InProcessServer::start_with_options(
        Backend::Sqlite,
        untrusted(Limits {
            max_connections_per_ip: CAP,
            ..Limits::default()
        }),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut stream = connect_from([127, 0, 5, 1], server.addr).await;
        let answer = get_on(&mut stream, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    // One more from the same address: answered 429 (or reset) and closed, without waiting.
    let mut refused = connect_from([127, 0, 5, 1], server.addr).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut answer))
        .await
        .expect("the connection over the cap was not closed at once");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_err() || answer.is_empty() || answer.starts_with("HTTP/1.1 429"),
        "{answer}"
    );
    if let Some(body) = answer.split("\r\n\r\n").nth(1) {
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
    }
    // Other addresses, even on the same network, have places of their own.
    for source in [[127, 0, 6, 1], [127, 0, 5, 2]] {
        let mut stream = connect_from(source, server.addr).await;
        let answer = get_on(&mut stream, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{source:?}: {answer}");
    }
    // The held connections are still served.
    let answer = get_on(&mut held[0], "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

/// A WebSocket handshake from `source`, by hand: the answer's status and JSON body (if any),
/// and the connection (a session while it stays open, after a 101).
async fn handshake_from(source: [u8; 4], addr: SocketAddr) -> (u16, Value, TcpStream) {
    let mut stream = connect_from(source, addr).await;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("a handshake answer within 5 s")
            .unwrap();
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            assert!(read > 0, "closed before the answer: {text}");
            continue;
        };
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        if body.len() >= length || read == 0 {
            let body = if length == 0 {
                Value::Null
            } else {
                serde_json::from_str(body).unwrap()
            };
            return (status, body, stream);
        }
    }
}

/// (d) Worker sessions per network: the third from one /24 is answered 429 before the upgrade;
/// another network still gets a session; a session that ends gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_network_are_capped() {
    let server = InProcessServer::start_with_options(
        Backend::Sqlite,
        untrusted(Limits {
            max_ws_sessions_per_network: 2,
            ..Limits::default()
        }),
    )
    .await;
    let (status, _, first) = handshake_from([127, 0, 7, 1], server.addr).await;
    assert_eq!(status, 101);
    let (status, _, _second) = handshake_from([127, 0, 7, 2], server.addr).await;
    assert_eq!(status, 101);
    let (status, body, _) = handshake_from([127, 0, 7, 3], server.addr).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_sessions", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("127.0.7.0/24"), "{message}");
    let (status, _, _other) = handshake_from([127, 0, 8, 1], server.addr).await;
    assert_eq!(status, 101);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, _) = handshake_from([127, 0, 7, 3], server.addr).await;
        if status == 101 {
            break;
        }
        assert!(
            status == 429 && Instant::now() < deadline,
            "the place was not given back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// (e) Body limits per route: `PUT /volunteers/me` takes 4 KiB (413 in the API's JSON
/// beyond), job submission and module uploads keep their own larger limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_are_per_route() {
    let server = InProcessServer::start(Backend::Sqlite).await;
    let client = reqwest::Client::new();
    let put_name = |bytes: usize| {
        let name = "x".repeat(bytes);
        client
            .put(format!("{}/api/v1/volunteers/me", server.http()))
            .header("x-grid-volunteer", "volunteer-1")
            .header("content-type", "application/json")
            .body(json!({ "display_name": name }).to_string())
            .send()
    };
    let response = put_name(10 * 1024).await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    // Under 4 KiB the handler decides (a name that long is invalid, not too large a body).
    let response = put_name(3 * 1024).await.unwrap();
    assert_ne!(response.status().as_u16(), 413);

    // A module upload over 64 KiB keeps the module limit.
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let module = wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 2)
             (data (i32.const 1024) "{}")
             (func (export "grid_alloc") (param $len i32) (result i32) i32.const 1024)
             (func (export "grid_run") (param $ptr i32) (param $len i32) (result i64)
               (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                       (i64.extend_i32_u (local.get $len)))))"#,
        "z".repeat(100 * 1024)
    ))
    .unwrap();
    assert!(module.len() > 100 * 1024);
    api.upload_module(module).await;
    // A job submission over 64 KiB keeps the configured maximum.
    let inputs: Vec<Value> = (0..1_000).map(|i| json!(format!("{i:0>100}"))).collect();
    api.submit(json!({"kernel": "echo", "inputs": inputs}))
        .await;
    server.stop().await;
}

/// L8: a shutdown does not wait for a request whose body never comes: after the grace period
/// the connection is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_half_sent_requests() {
    let server = InProcessServer::start_with_options(
        Backend::Sqlite,
        ServeOptions {
            shutdown_grace: Some(Duration::from_secs(1)),
            ..ServeOptions::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"kernel\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The request is in flight once the handler reads its body; wait for that via /healthz
    // answering on another connection (the accept loop has taken the first one by then).
    healthz(server.addr).await;
    let started = Instant::now();
    server.stop().await;
    let took = started.elapsed();
    println!("shutdown with a half-sent request took {took:?}");
    // Drain (1 s, no leases) + connections' grace (1 s) + scheduler, well under stop's 10 s.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the half-sent request's connection is still open"
    );
}

/// L5: ping frames count against the message rate like messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_rate_limited() {
    let server = InProcessServer::start_with(
        Backend::Sqlite,
        Limits {
            ws_messages_per_second: 10,
            ws_message_burst: 20,
            ..Limits::default()
        },
    )
    .await;
    let mut peer = Peer::join(&server.ws(), "pinger-1", 1).await;
    for _ in 0..200 {
        if peer
            .socket
            .feed(Message::Ping(Vec::new().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = peer.socket.flush().await;
    let (_, errors, close) = read_to_close(&mut peer).await;
    assert_eq!(errors, ["rate_limited"]);
    let (code, _) = close.expect("a close frame");
    assert_eq!(code, u16::from(CloseCode::Policy));
    server.stop().await;
}

/// (b) A write to a worker that stalls past the write timeout ends the session even while the
/// outbox has room: the master drops the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_ends_the_session() {
    let _turn = HEAVY.lock().await;
    let limits = Limits {
        ws_outbox_messages: 10_000_000,
        ws_max_refusals: u32::MAX,
        ws_messages_per_second: 10_000_000,
        ws_message_burst: 10_000_000,
        ws_write_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = InProcessServer::start_with(Backend::Sqlite, limits).await;
    let mut peer = deaf_peer(&server, "deaf-2").await;
    let (sent, took) = flood_until_stalled(&mut peer).await;
    // Reading now drains what was buffered, then the connection ends: no close frame can come
    // (the writer gave up), at most a reset.
    let started = Instant::now();
    let (rejected, _, close) = read_to_close(&mut peer).await;
    println!(
        "stalled writer: sent {sent} bogus results in {took:?}, read {rejected} refusals, \
         connection gone {:?} after reading began",
        started.elapsed()
    );
    assert!((rejected as i64) < sent);
    assert!(close.is_none(), "{close:?}");
    assert!(healthz(server.addr).await < Duration::from_secs(1));
    server.stop().await;
}
