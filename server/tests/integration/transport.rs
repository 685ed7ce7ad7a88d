//! Transport and authentication (issue 19, M8, L1–L4, L8, L10), over real sockets:
//! - TLS: a master serving HTTPS and WSS with a certificate of a private CA (made here with
//!   rcgen); a real `grid-worker` completes a job over wss and the `grid` CLI submits and reads
//!   over https, both trusting the CA with `--ca-cert`; plain HTTP to the TLS port and a
//!   silent TCP peer are closed (the latter within the header timeout); HSTS on every answer.
//! - `--public-origin`: DNS rebinding (`Host: evil.example`, `Origin: http://evil.example`)
//!   refused when set, passing when unset (the documented default).
//! - Tokens: listed without secrets, revoked at once here and within the cache lifetime on a
//!   second master; failed authentication rate-limited per network with 429 and
//!   `Retry-After`; a short admin token refused at start; a generated one never printed.
//! - Logs: a worker identity and the tokens never appear in the master's log, at any level.
//! - Shutdown: a request whose headers never finish does not hold it (over TLS too).
//! - Headers: `X-Content-Type-Options: nosniff` and `X-Frame-Options: DENY` on API answers.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    ADMIN_TOKEN, Api, Backend, Home, InProcessServer, Peer, Process, primes_inputs,
    primes_reference, primes_total,
};
use grid_protocol::{MasterMessage, Outcome, WorkerMessage};
use grid_server::ServeOptions;
use grid_server::limits::Limits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A private CA and a master certificate it signed (for `localhost` and `127.0.0.1`), as PEM
/// files in a temporary directory.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn new() -> Certificates {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "grid test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Certificates { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        grid_server::tls::server_config(&self.cert(), &self.key()).unwrap()
    }

    /// An HTTPS client trusting the CA.
    fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(self.ca()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    }
}

/// `grid --url URL --token ADMIN --ca-cert CA ARGS...`, which must succeed: its stdout.
async fn run_cli(url: &str, ca: &Path, args: &[&str]) -> String {
    let mut command = Command::new(common::target_dir_binary("grid"));
    command
        .args(["--url", url, "--token", ADMIN_TOKEN, "--ca-cert"])
        .arg(ca)
        .args(args)
        .env_remove("GRID_URL")
        .env_remove("GRID_TOKEN");
    let shown = format!("{args:?}");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "grid {shown}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn tls_master(
    backend: Backend,
    certificates: &Certificates,
    limits: Limits,
) -> InProcessServer {
    InProcessServer::start_with_options(
        backend,
        ServeOptions {
            tls: Some(certificates.server_config()),
            limits,
            ..ServeOptions::default()
        },
    )
    .await
}

/// A real worker and the CLI against a master serving only TLS: the job completes over wss,
/// the CLI submits it and reads it back over https, HSTS and the L10 headers come with every
/// answer, and a client that does not trust the CA gets nowhere.
async fn a_worker_and_the_cli_work_over_tls(backend: Backend) {
    let certificates = Certificates::new();
    let server = tls_master(backend, &certificates, Limits::default()).await;
    let https = format!("https://localhost:{}", server.addr.port());
    let wss = format!("wss://localhost:{}/ws", server.addr.port());

    let inputs = primes_inputs(0, 200_000, 8);
    let expected = primes_reference(&inputs);
    let inputs_file = certificates.dir.path().join("inputs.json");
    std::fs::write(&inputs_file, serde_json::to_vec(&inputs).unwrap()).unwrap();
    let inputs_arg = inputs_file.to_str().unwrap().to_owned();
    let submitted = run_cli(
        &https,
        &certificates.ca(),
        &[
            "submit",
            "--kernel",
            "primes",
            "--inputs",
            &inputs_arg,
            "--redundancy",
            "1",
        ],
    )
    .await;
    let job: i64 = submitted.trim().parse().unwrap();

    let identity = certificates.dir.path().join("worker.id");
    let _worker = Process {
        child: Command::new(common::target_dir_binary("grid-worker"))
            .args(["--server", &wss, "--threads", "2", "--ca-cert"])
            .arg(certificates.ca())
            .arg("--identity-file")
            .arg(&identity)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    };

    // The test's own client trusts the CA too; it follows the job.
    let client = certificates.client();
    let api = Api {
        base: https.clone(),
        token: ADMIN_TOKEN.into(),
        client: client.clone(),
    };
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = run_cli(&https, &certificates.ca(), &["results", &job.to_string()]).await;
    let results: Vec<Value> = results
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(primes_total(&results, 8, Some(1)), expected);

    // A task module: the worker downloads it over https, trusting the same CA.
    let module = api.upload_module(common::modules::echo()).await;
    let job = api
        .submit(json!({"module": module, "inputs": [1, {"a": 2}, "three"], "redundancy": 1}))
        .await;
    assert_eq!(
        api.outputs(job, 1).await,
        [json!(1), json!({"a": 2}), json!("three")]
    );

    // Every answer over TLS carries HSTS; API answers nosniff and DENY (L10).
    let response = client
        .get(format!("{https}/api/v1/jobs/{job}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");

    // The CLI's token commands over https too.
    let token = run_cli(
        &https,
        &certificates.ca(),
        &["token", "create", "--label", "ci runner"],
    )
    .await;
    assert!(token.trim().starts_with("grid_"), "{token}");
    let listed = run_cli(&https, &certificates.ca(), &["token", "list"]).await;
    let line = listed
        .lines()
        .find(|line| line.ends_with("ci runner"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(!listed.contains(token.trim()), "the list shows the token");
    let id = line.split('\t').next().unwrap();
    let revoked = run_cli(&https, &certificates.ca(), &["token", "revoke", id]).await;
    assert_eq!(revoked.trim(), format!("token {id} revoked"));
    let (status, _) = Api {
        base: https.clone(),
        token: token.trim().into(),
        client: client.clone(),
    }
    .get("/api/v1/jobs")
    .await;
    assert_eq!(status, 401);

    // Without the CA, the certificate is not trusted.
    let untrusting = reqwest::Client::new()
        .get(format!("{https}/healthz"))
        .send()
        .await;
    let error = untrusting.expect_err("a certificate of an unknown CA was accepted");
    assert!(error.is_connect(), "{error:?}");
    server.stop().await;
}

/// Plain HTTP to the TLS port is closed at once; a peer that never sends its ClientHello is
/// closed within the header-read timeout; neither holds the accept loop.
async fn plain_and_silent_peers_are_closed(backend: Backend) {
    let certificates = Certificates::new();
    let timeout = Duration::from_secs(1);
    let server = tls_master(
        backend,
        &certificates,
        Limits {
            header_read_timeout: timeout,
            ..Limits::default()
        },
    )
    .await;

    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "plain HTTP to the TLS port hangs");
    assert!(
        started.elapsed() < timeout,
        "plain HTTP took {:?} to be closed",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plain HTTP was answered: {answer:?}"
    );

    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let opened = Instant::now();
    // The master still answers over TLS meanwhile.
    let client = certificates.client();
    let health = client
        .get(format!("https://localhost:{}/healthz", server.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    for stream in &mut silent {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a silent peer was still open after 5 s");
    }
    let closed = opened.elapsed();
    println!("20 silent TCP peers closed {closed:?} after opening (header timeout {timeout:?})");
    assert!(closed >= timeout - Duration::from_millis(100), "{closed:?}");
    assert!(closed < timeout * 3, "{closed:?}");
    server.stop().await;
}

/// A WebSocket handshake to `ws` with these `Host` and `Origin` headers: its HTTP status
/// (101 when the session opened).
async fn handshake_status(ws: &str, host: &str, origin: &str) -> u16 {
    let mut request = ws.into_client_request().unwrap();
    request.headers_mut().insert("host", host.parse().unwrap());
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("handshake failed: {other}"),
    }
}

/// M8: DNS rebinding passes the default Origin check (documented) and is refused once
/// `--public-origin` names the master's real origin, which then works whatever the Host.
async fn public_origins_stop_dns_rebinding(backend: Backend) {
    let open = InProcessServer::start(backend).await;
    assert_eq!(
        handshake_status(&open.ws(), "evil.example", "http://evil.example").await,
        101,
        "the default policy trusts the Host (documented)"
    );
    open.stop().await;

    let pinned = InProcessServer::start_with_options(
        backend,
        ServeOptions {
            public_origins: vec!["https://grid.example".into()],
            ..ServeOptions::default()
        },
    )
    .await;
    assert_eq!(
        handshake_status(&pinned.ws(), "evil.example", "http://evil.example").await,
        403
    );
    let own = format!("127.0.0.1:{}", pinned.addr.port());
    assert_eq!(
        handshake_status(&pinned.ws(), &own, &format!("http://{own}")).await,
        403,
        "the Host no longer decides"
    );
    assert_eq!(
        handshake_status(&pinned.ws(), "grid.example", "https://grid.example").await,
        101
    );
    // Native workers send no Origin.
    Peer::join(&pinned.ws(), "native-origin-test", 1).await;
    pinned.stop().await;
}

/// L1: tokens are listed without their secrets and revoked at once; bad requests get clear
/// errors.
async fn tokens_are_listed_and_revoked(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let (status, created) = admin
        .post("/api/v1/tokens", &json!({"label": "lab A"}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["label"], "lab A");
    let id = created["id"].as_i64().unwrap();
    let secret = created["token"].as_str().unwrap().to_owned();
    // An empty body still creates an unlabelled token (what older clients send).
    let response = admin
        .client
        .post(format!("{}/api/v1/tokens", server.http()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let other: Value = response.json().await.unwrap();
    let other_id = other["id"].as_i64().unwrap();

    let (status, list) = admin.get("/api/v1/tokens").await;
    assert_eq!(status, 200);
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{list}");
    assert_eq!(tokens[0]["id"], id);
    assert_eq!(tokens[0]["label"], "lab A");
    assert!(tokens[0]["created_at"].is_string());
    assert!(tokens[0]["last_used_at"].is_null(), "{list}");
    assert!(tokens[0]["revoked_at"].is_null());
    assert_eq!(tokens[1]["label"], Value::Null);
    let text = list.to_string();
    assert!(!text.contains(&secret), "the list shows a token: {text}");
    let digest = hex::encode(grid_server::auth::hash_token(&secret));
    assert!(!text.contains(&digest), "the list shows a digest");
    for token in tokens {
        let mut keys: Vec<&str> = token
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "created_at",
                "id",
                "label",
                "last_used_at",
                "revoked_at",
                "weight"
            ]
        );
    }

    let submitter = Api::new(&server.http(), &secret);
    assert_eq!(submitter.get("/api/v1/jobs").await.0, 200);
    let (_, list) = admin.get("/api/v1/tokens").await;
    assert!(list["tokens"][0]["last_used_at"].is_string(), "{list}");
    // Submitters cannot list or revoke.
    let (status, body) = submitter.get("/api/v1/tokens").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = submitter
        .delete(&format!("/api/v1/tokens/{other_id}"))
        .await;
    assert_eq!(status, 403);

    let (status, body) = admin.delete(&format!("/api/v1/tokens/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"id": id, "revoked": true}));
    // At once on this master, though the token was cached a moment ago.
    let (status, body) = submitter.get("/api/v1/jobs").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (_, list) = admin.get("/api/v1/tokens").await;
    assert!(list["tokens"][0]["revoked_at"].is_string(), "{list}");
    assert!(list["tokens"][1]["revoked_at"].is_null(), "{list}");
    // Twice: 409; unknown or malformed ids: 404.
    let (status, body) = admin.delete(&format!("/api/v1/tokens/{id}")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    for bad in ["999999", "abc", "-1", "1.5"] {
        let (status, body) = admin.delete(&format!("/api/v1/tokens/{bad}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{bad}"
        );
    }
    // Labels are bounded and checked.
    for bad in [
        json!({"label": "x".repeat(101)}),
        json!({"label": "a\u{0}b"}),
        json!({"nope": 1}),
    ] {
        let (status, body) = admin.post("/api/v1/tokens", &bad).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_field")),
            "{bad}"
        );
    }
    let response = admin
        .client
        .post(format!("{}/api/v1/tokens", server.http()))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = admin
        .client
        .post(format!("{}/api/v1/tokens", server.http()))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body("label")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    server.stop().await;
}

/// L2: the master remembers that a token is unknown, for the cache lifetime: a token written
/// into the database behind its back (as another master would) is refused until that
/// answer expires, so repeating a wrong token costs no query.
async fn unknown_tokens_are_cached_for_the_cache_lifetime(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let token = grid_server::auth::new_token();
    let api = Api::new(&server.http(), &token);
    assert_eq!(api.get("/api/v1/jobs").await.0, 401);
    let asked = Instant::now();
    server
        .store
        .shared()
        .create_token(&grid_server::auth::hash_token(&token), None)
        .await
        .unwrap();
    // Polled slowly: each refusal counts against this address's failure budget.
    let ttl = grid_server::auth::TOKEN_CACHE_TTL;
    loop {
        let (status, body) = api.get("/api/v1/jobs").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 401, "{body}");
        assert!(
            asked.elapsed() < ttl + Duration::from_secs(2),
            "still refused after {:?}",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = asked.elapsed();
    println!("a token created behind the master's back worked after {took:?}");
    assert!(
        took >= ttl - Duration::from_millis(600),
        "not cached: {took:?}"
    );
    server.stop().await;
}

/// L1: a token revoked on one master stops working on another master sharing the database
/// within the cache lifetime (PostgreSQL: the deployment with several masters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_other_masters_within_the_cache_lifetime() {
    let first = InProcessServer::start(Backend::Postgres).await;
    let Home::Postgres(db) = &first.home else {
        unreachable!()
    };
    let second_store = grid_server::store::postgres::PgStore::connect(&db.url)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_addr = listener.local_addr().unwrap();
    let (stop_second, stopped) = tokio::sync::oneshot::channel::<()>();
    let second = tokio::spawn(grid_server::serve(
        listener,
        Arc::new(second_store),
        ServeOptions {
            admin_token: Some(ADMIN_TOKEN.into()),
            ..ServeOptions::default()
        },
        async {
            let _ = stopped.await;
        },
    ));

    let admin = Api::new(&first.http(), ADMIN_TOKEN);
    let (_, created) = admin.post("/api/v1/tokens", &json!({})).await;
    let id = created["id"].as_i64().unwrap();
    let on_second = Api::new(
        &format!("http://{second_addr}"),
        created["token"].as_str().unwrap(),
    );
    assert_eq!(
        on_second.get("/api/v1/jobs").await.0,
        200,
        "cached on the second master"
    );
    let (status, _) = admin.delete(&format!("/api/v1/tokens/{id}")).await;
    assert_eq!(status, 200);
    let revoked = Instant::now();
    loop {
        let (status, _) = on_second.get("/api/v1/jobs").await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < grid_server::auth::TOKEN_CACHE_TTL + Duration::from_secs(2),
            "the second master still takes the token {:?} after its revocation",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "revocation reached the second master after {:?}",
        revoked.elapsed()
    );
    let _ = stop_second.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), second).await;
    first.stop().await;
}

/// An HTTP client whose connections come from `source` (a 127.x.y.z of its own network).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn status_with(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> (u16, Option<String>, Value) {
    let response = client
        .get(format!("{base}/api/v1/jobs"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

/// L2: failed authentications are limited per network: after the burst, 429 with
/// `Retry-After` (the database is not asked); other networks and tokens the master already
/// knows are unaffected; after the wait one more try is allowed.
async fn failed_authentication_is_rate_limited(backend: Backend) {
    // Every peer counts by its network (nothing trusted), so 127.0.5.1 and 127.0.6.1 differ.
    let server = InProcessServer::start_with_options(
        backend,
        ServeOptions {
            networks: grid_server::network::NetworkPolicy::parse("24", "none", "").unwrap(),
            ..ServeOptions::default()
        },
    )
    .await;
    let base = server.http();
    let admin = Api::new(&base, ADMIN_TOKEN);
    let (_, created) = admin.post("/api/v1/tokens", &json!({})).await;
    let known = created["token"].as_str().unwrap().to_owned();
    let attacker = client_from("127.0.5.1");
    // The attacker's network uses a real token first: it is cached.
    assert_eq!(status_with(&attacker, &base, &known).await.0, 200);

    let burst = grid_server::auth::AUTH_FAILURE_BURST;
    for i in 0..burst {
        let (status, _, body) = status_with(&attacker, &base, &format!("grid_guess{i}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "guess {i}"
        );
    }
    let (status, retry, body) = status_with(&attacker, &base, "grid_guess-over").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_auth_failures");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    let per_token = 60 / u64::from(grid_server::auth::AUTH_FAILURES_PER_MINUTE);
    assert!((1..=per_token).contains(&retry), "Retry-After: {retry}");
    // Even the admin token is refused from there (no brute force of it either) ...
    assert_eq!(status_with(&attacker, &base, ADMIN_TOKEN).await.0, 429);
    // ... but a token this master already knows still works,
    assert_eq!(status_with(&attacker, &base, &known).await.0, 200);
    // and another network is not affected.
    let neighbour = client_from("127.0.6.1");
    assert_eq!(status_with(&neighbour, &base, "grid_wrong").await.0, 401);
    assert_eq!(status_with(&neighbour, &base, ADMIN_TOKEN).await.0, 200);

    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(200)).await;
    assert_eq!(
        status_with(&attacker, &base, ADMIN_TOKEN).await.0,
        200,
        "after Retry-After"
    );
    server.stop().await;
}

/// Start `grid-server` for `home` with `flags` and this environment; its stdout lines up to
/// the listening line (or all of them, if it exits), and the process.
fn start_master_process(
    home: &Home,
    flags: &[&str],
    admin_token: Option<&str>,
    log: &str,
) -> (Vec<String>, Option<SocketAddr>, Process) {
    let mut command = Command::new(common::target_dir_binary("grid-server"));
    home.configure(&mut command);
    match admin_token {
        Some(token) => command.env("GRID_ADMIN_TOKEN", token),
        None => command.env_remove("GRID_ADMIN_TOKEN"),
    };
    let mut child = command
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .env("RUST_LOG", log)
        .env_remove("GRID_TLS_CERT")
        .env_remove("GRID_TLS_KEY")
        .env_remove("GRID_PUBLIC_ORIGIN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let listening = line
            .strip_prefix("grid-server listening on ")
            .and_then(|url| url.split_once("://"))
            .map(|(_, address)| address.trim().parse().unwrap());
        seen.push(line);
        if listening.is_some() {
            addr = listening;
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (seen, addr, Process { child })
}

/// All of a process's stderr once it has exited (after `terminate`).
fn stderr_of(process: &mut Process) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = process.child.stderr.take() {
        stderr.read_to_string(&mut text).unwrap();
    }
    text
}

/// L1: a short admin token is refused at start; a generated one is written to the data
/// directory's `admin-token` (0600, an existing file's mode fixed) and never printed, with
/// either backend.
async fn admin_tokens_are_long_and_never_printed(backend: Backend) {
    let home = Home::new(backend).await;
    let (_, addr, mut short) = start_master_process(&home, &[], Some("short-token"), "warn");
    assert!(
        addr.is_none(),
        "a master started with an 11-character admin token"
    );
    let status = short.child.wait().unwrap();
    assert!(!status.success());
    let stderr = stderr_of(&mut short);
    assert!(stderr.contains("at least 16"), "{stderr}");

    let data = tempfile::tempdir().unwrap();
    let data_flag = data.path().to_str().unwrap().to_owned();
    let flags: Vec<&str> = match backend {
        Backend::Postgres => vec!["--data-dir", &data_flag],
        Backend::Sqlite => vec![],
    };
    let file = match &home {
        Home::Sqlite(dir) => dir.path().join("admin-token"),
        Home::Postgres(_) | Home::Url(_) => data.path().join("admin-token"),
    };
    for run in 0..2 {
        let (printed, addr, mut master) = start_master_process(&home, &flags, None, "warn");
        let addr = addr.unwrap_or_else(|| panic!("no listening line: {printed:?}"));
        let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
        assert!(token.len() >= 64, "{token}");
        let printed = printed.join("\n");
        assert!(
            !printed.contains(&token),
            "the admin token was printed: {printed}"
        );
        assert!(printed.contains(&file.display().to_string()), "{printed}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "run {run}");
        }
        let api = Api::new(&format!("http://{addr}"), &token);
        assert_eq!(
            api.get("/api/v1/jobs").await.0,
            200,
            "the stored token works"
        );
        master.terminate();
        assert!(!stderr_of(&mut master).contains(&token));
        // Before the second run the file is world-readable, as an older master left it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// L3: a worker identity and the tokens (admin, submitter, a wrong one) never appear in the
/// master's log, even at trace level, through a whole session and failed authentications.
async fn secrets_never_reach_the_log(backend: Backend) {
    let home = Home::new(backend).await;
    let (_, addr, mut master) =
        start_master_process(&home, &[], Some(ADMIN_TOKEN), "grid_server=trace,info");
    let addr = addr.expect("listening");
    let http = format!("http://{addr}");
    let admin = Api::new(&http, ADMIN_TOKEN);
    let (_, created) = admin
        .post("/api/v1/tokens", &json!({"label": "logs"}))
        .await;
    let submitter_token = created["token"].as_str().unwrap().to_owned();
    let submitter = Api::new(&http, &submitter_token);
    let job = submitter
        .submit(json!({"kernel": "echo", "inputs": [1, 2, 3], "redundancy": 1}))
        .await;
    let identity = "native-5ec7e75ec7e75ec7e75ec7e75ec7e7aa";
    let mut peer = Peer::join(&format!("ws://{addr}/ws"), identity, 4).await;
    for _ in 0..3 {
        let (lease, input) = peer.next_assignment().await;
        peer.send(&WorkerMessage::Result {
            lease,
            outcome: Outcome::Ok(input),
        })
        .await;
    }
    let finished = submitter.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    // The volunteer's own routes take the identity as a header.
    let response = reqwest::Client::new()
        .get(format!("{http}/api/v1/volunteers/me"))
        .header("x-grid-volunteer", identity)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success() || response.status().as_u16() == 404);
    let wrong = "grid_0000wrongtoken0000wrongtoken0000wrongtoken0000wrongtoken00";
    assert_eq!(Api::new(&http, wrong).get("/api/v1/jobs").await.0, 401);
    // A refused hello names the identity too.
    let mut bad = Peer::connect(&format!("ws://{addr}/ws")).await;
    bad.send(&WorkerMessage::Hello {
        protocol: 999,
        worker_id: identity.into(),
        slots: 1,
        kind: grid_protocol::WorkerKind::Native,
        work: None,
    })
    .await;
    assert!(matches!(
        bad.recv().await,
        Some(MasterMessage::Error { .. })
    ));
    drop(peer);
    master.terminate();
    let log = stderr_of(&mut master);
    assert!(
        log.contains("worker connected"),
        "the log has no session at all:\n{log}"
    );
    for (what, secret) in [
        ("worker identity", identity),
        ("admin token", ADMIN_TOKEN),
        ("submitter token", submitter_token.as_str()),
        ("wrong token", wrong),
    ] {
        assert!(!log.contains(secret), "the {what} is in the log:\n{log}");
    }
    // What the log says instead: the identity's fingerprint.
    assert!(
        log.contains(&grid_server::auth::fingerprint(identity)),
        "{log}"
    );
}

/// L4: a reconnect storm and refused origins leave the default (info) log quiet.
async fn reconnects_do_not_flood_the_log(backend: Backend) {
    let home = Home::new(backend).await;
    let (_, addr, mut master) = start_master_process(&home, &[], Some(ADMIN_TOKEN), "info");
    let addr = addr.expect("listening");
    let ws = format!("ws://{addr}/ws");
    for i in 0..50 {
        let peer = Peer::join(&ws, &format!("native-storm-{i}"), 1).await;
        drop(peer);
        assert_eq!(
            handshake_status(&ws, &addr.to_string(), "http://evil.example").await,
            403
        );
    }
    master.terminate();
    let log = stderr_of(&mut master);
    let lines = log.lines().count();
    println!("master log after 50 reconnects and 50 refused origins: {lines} lines");
    assert!(lines < 20, "{lines} lines:\n{log}");
}

/// L8: a graceful shutdown does not wait for requests whose headers never finish, over TLS
/// and plain TCP alike (the header timeout is long here, so only the deadline can end them).
async fn shutdown_does_not_wait_for_slow_headers(backend: Backend) {
    let certificates = Certificates::new();
    let server = InProcessServer::start_with_options(
        backend,
        ServeOptions {
            tls: Some(certificates.server_config()),
            shutdown_grace: Some(Duration::from_secs(1)),
            limits: Limits {
                header_read_timeout: Duration::from_secs(120),
                ..Limits::default()
            },
            ..ServeOptions::default()
        },
    )
    .await;
    // Half a request over TLS, by hand.
    let mut roots = rustls::RootCertStore::empty();
    for certificate in grid_protocol_certificates(&certificates.ca()) {
        roots.add(certificate).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    // And a plain TCP peer that opened and said nothing (its handshake is pending).
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let health = certificates
        .client()
        .get(format!("https://localhost:{}/healthz", server.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let started = Instant::now();
    server.stop().await;
    let took = started.elapsed();
    println!("shutdown with slow headers took {took:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the slow TLS request's connection is still open"
    );
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the silent connection is still open");
}

fn grid_protocol_certificates(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A master process serving TLS from `--tls-cert`/`--tls-key` says https in its listening
/// line; a key that does not fit is refused at start with a clear error.
async fn a_master_process_serves_tls_from_pem_files(backend: Backend) {
    let certificates = Certificates::new();
    let home = Home::new(backend).await;
    let cert = certificates.cert();
    let key = certificates.key();
    let flags = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (printed, addr, mut master) =
        start_master_process(&home, &flags, Some(ADMIN_TOKEN), "warn");
    let addr = addr.unwrap_or_else(|| panic!("{printed:?}"));
    assert!(
        printed
            .last()
            .unwrap()
            .starts_with("grid-server listening on https://"),
        "{printed:?}"
    );
    let health = certificates
        .client()
        .get(format!("https://localhost:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(
        health.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    master.terminate();

    // The CA's certificate with the master's key: they do not go together.
    let ca = certificates.ca();
    let wrong = [
        "--tls-cert",
        ca.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let (_, addr, mut refused) = start_master_process(&home, &wrong, Some(ADMIN_TOKEN), "warn");
    assert!(addr.is_none());
    assert!(!refused.child.wait().unwrap().success());
    let stderr = stderr_of(&mut refused);
    assert!(stderr.contains("cannot serve TLS"), "{stderr}");
}

/// `grid-loadgen` simulates workers against a master serving TLS (`wss://`, `--ca-cert`).
async fn grid_loadgen_works_over_wss(backend: Backend) {
    let certificates = Certificates::new();
    let server = tls_master(backend, &certificates, Limits::default()).await;
    let api = Api {
        base: format!("https://localhost:{}", server.addr.port()),
        token: ADMIN_TOKEN.into(),
        client: certificates.client(),
    };
    let inputs: Vec<Value> = (0..200).map(|i| json!(i)).collect();
    let job = api
        .submit(json!({"kernel": "echo", "inputs": inputs, "redundancy": 2}))
        .await;
    let mut command = Command::new(common::target_dir_binary("grid-loadgen"));
    command
        .args([
            "--server",
            &format!("wss://localhost:{}/ws", server.addr.port()),
        ])
        .args([
            "--workers",
            "4",
            "--until-idle",
            "--idle-s",
            "1",
            "--ca-cert",
        ])
        .arg(certificates.ca())
        .env("RUST_LOG", "warn");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let outputs = api.outputs(job, 2).await;
    assert_eq!(outputs, (0..200).map(|i| json!(i)).collect::<Vec<_>>());
    server.stop().await;
}

on_both_backends!(
    grid_loadgen_works_over_wss,
    a_worker_and_the_cli_work_over_tls,
    plain_and_silent_peers_are_closed,
    public_origins_stop_dns_rebinding,
    tokens_are_listed_and_revoked,
    unknown_tokens_are_cached_for_the_cache_lifetime,
    failed_authentication_is_rate_limited,
    admin_tokens_are_long_and_never_printed,
    secrets_never_reach_the_log,
    reconnects_do_not_flood_the_log,
    shutdown_does_not_wait_for_slow_headers,
    a_master_process_serves_tls_from_pem_files,
);
