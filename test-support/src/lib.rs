//! Fixtures shared by the integration tests of the master, the CLI and `grid-loadgen`: a fresh
//! PostgreSQL database per test ([`TestDb`]) or a fresh embedded data directory ([`Home`]),
//! the master in-process ([`InProcessServer`]) or as a real `grid-server` process
//! ([`spawn_server_process`]), real `grid-worker` processes ([`spawn_worker`]), a small REST
//! client ([`Api`]), and the `primes` helpers that check a job's results against the kernels;
//! [`clusters`]: PostgreSQL primaries and standbys of a test's own, for failover tests.
//!
//! The processes are the workspace's own binaries, found next to the test executable
//! (`cargo build --workspace --bins` first; `cargo xtask test` does). PostgreSQL comes from
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    missing_debug_implementations
)]

pub mod clusters;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use grid_protocol::states::JobState;
use grid_server::limits::Limits;
use grid_server::store::insights::Database;
use grid_server::store::postgres::PgStore;
use grid_server::store::sqlite::SqliteStore;
use grid_server::{ServeOptions, serve};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A database created for one test and dropped afterwards.
pub struct TestDb {
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("grid_test_{}", hex::encode(rand::random::<[u8; 6]>()));
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("DATABASE_URL must point at a running PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        let url = match admin_url.rfind('/') {
            Some(slash)
                if admin_url[..slash].contains("//")
                    && slash > admin_url.find("//").unwrap() + 1 =>
            {
                let (base, rest) = admin_url.split_at(slash);
                let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
                format!("{base}/{name}{query}")
            }
            _ => format!("{admin_url}/{name}"),
        };
        TestDb {
            url,
            name,
            admin_url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Which database a test runs against: the contract suite runs every test on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Where a master keeps its state: a fresh PostgreSQL database or a fresh data directory.
pub enum Home {
    Postgres(TestDb),
    Sqlite(tempfile::TempDir),
    /// A PostgreSQL URL the test manages itself (its own clusters, several hosts).
    Url(String),
}

impl Home {
    pub async fn new(backend: Backend) -> Home {
        match backend {
            Backend::Postgres => Home::Postgres(TestDb::new().await),
            Backend::Sqlite => Home::Sqlite(tempfile::tempdir().unwrap()),
        }
    }

    pub async fn open(&self) -> TestStore {
        match self {
            Home::Postgres(db) => TestStore::Postgres(PgStore::connect(&db.url).await.unwrap()),
            Home::Sqlite(dir) => TestStore::Sqlite(SqliteStore::open(dir.path()).await.unwrap()),
            Home::Url(url) => TestStore::Postgres(PgStore::connect(url).await.unwrap()),
        }
    }

    /// Arguments and environment that point a `grid-server` process at this home.
    pub fn configure(&self, command: &mut Command) {
        match self {
            Home::Postgres(db) => {
                command.env("DATABASE_URL", &db.url);
            }
            Home::Url(url) => {
                command.env("DATABASE_URL", url);
            }
            Home::Sqlite(dir) => {
                command
                    .env_remove("DATABASE_URL")
                    .arg("--data-dir")
                    .arg(dir.path());
            }
        }
    }
}

/// A store the test can also query directly (portable SQL without parameters).
#[derive(Clone, Debug)]
pub enum TestStore {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl TestStore {
    pub fn shared(&self) -> Arc<dyn Database> {
        match self {
            TestStore::Postgres(store) => Arc::new(store.clone()),
            TestStore::Sqlite(store) => Arc::new(store.clone()),
        }
    }

    /// One integer from a query.
    pub async fn count(&self, sql: &str) -> i64 {
        match self {
            TestStore::Postgres(store) => sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(store.pool())
                .await
                .unwrap(),
            TestStore::Sqlite(store) => sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(store.pool())
                .await
                .unwrap(),
        }
    }

    /// Run a statement (tests reach into the database to set up a state, e.g. age a job).
    pub async fn execute(&self, sql: &str) {
        match self {
            TestStore::Postgres(store) => {
                sqlx::query(sql).execute(store.pool()).await.unwrap();
            }
            TestStore::Sqlite(store) => {
                sqlx::query(sql).execute(store.pool()).await.unwrap();
            }
        }
    }

    /// One text from a query.
    pub async fn text(&self, sql: &str) -> String {
        match self {
            TestStore::Postgres(store) => sqlx::query_scalar::<_, String>(sql)
                .fetch_one(store.pool())
                .await
                .unwrap(),
            TestStore::Sqlite(store) => sqlx::query_scalar::<_, String>(sql)
                .fetch_one(store.pool())
                .await
                .unwrap(),
        }
    }

    /// A column of blobs.
    pub async fn blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        match self {
            TestStore::Postgres(store) => sqlx::query_scalar::<_, Vec<u8>>(sql)
                .fetch_all(store.pool())
                .await
                .unwrap(),
            TestStore::Sqlite(store) => sqlx::query_scalar::<_, Vec<u8>>(sql)
                .fetch_all(store.pool())
                .await
                .unwrap(),
        }
    }
}

/// The master running inside the test process.
pub struct InProcessServer {
    pub addr: SocketAddr,
    pub store: TestStore,
    pub home: Home,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessServer {
    pub async fn start(backend: Backend) -> InProcessServer {
        Self::start_with(backend, Limits::default()).await
    }

    pub async fn start_with(backend: Backend, limits: Limits) -> InProcessServer {
        Self::start_with_options(
            backend,
            ServeOptions {
                limits,
                ..ServeOptions::default()
            },
        )
        .await
    }

    pub async fn start_with_options(backend: Backend, options: ServeOptions) -> InProcessServer {
        if std::env::var_os("GRID_TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_env("GRID_TEST_LOG"))
                .with_test_writer()
                .try_init();
        }
        let home = Home::new(backend).await;
        let store = home.open().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            admin_token: Some(ADMIN_TOKEN.into()),
            ..options
        };
        let task = tokio::spawn({
            let store = store.shared();
            async move {
                serve(listener, store, options, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            }
        });
        InProcessServer {
            addr,
            store,
            home,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// The path of one of the workspace's binaries (`grid-server`, `grid-worker`, ...).
pub fn target_dir_binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (cargo xtask test does)",
        path.display()
    );
    path
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
}

/// A line of `/proc/<pid>/status` in KiB: `"VmRSS:"` (resident memory now) or `"VmHWM:"`
/// (its peak, since the start or since [`reset_peak_memory`]).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} for process {pid}"))
}

/// Resets a process's peak resident memory (`VmHWM`) to what it holds now.
pub fn reset_peak_memory(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

impl Process {
    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit (bounded).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `grid-server` as a real process on a given address (port 0 picks one).
pub fn spawn_server_process(home: &Home, listen: &str) -> (Process, SocketAddr) {
    spawn_server_process_with(home, listen, &[])
}

/// `grid-server` as a real process on a given address, with extra flags.
pub fn spawn_server_process_with(
    home: &Home,
    listen: &str,
    flags: &[&str],
) -> (Process, SocketAddr) {
    let mut command = Command::new(target_dir_binary("grid-server"));
    home.configure(&mut command);
    let mut child = command
        .args(["--listen", listen])
        .args(flags)
        .env("GRID_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("grid-server exited before listening")
            .unwrap();
        if let Some(url) = line.strip_prefix("grid-server listening on http://") {
            break url.trim().parse().unwrap();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Process { child }, addr)
}

/// A real `grid-worker` process.
pub fn spawn_worker(server_ws: &str, threads: u32, identity_file: &std::path::Path) -> Process {
    spawn_worker_failover(&[server_ws], threads, identity_file)
}

/// A real `grid-worker` process given several masters, in order of preference.
pub fn spawn_worker_failover(
    servers: &[&str],
    threads: u32,
    identity_file: &std::path::Path,
) -> Process {
    spawn_worker_with(servers, threads, identity_file, &[])
}

/// `count` real `grid-worker` processes of one thread that all know both masters, half
/// preferring each (worker `i` lists `masters[i % 2]` first); identities `w<i>.id` in
/// `identities`.
pub fn spawn_workers_across(
    masters: [&str; 2],
    count: usize,
    identities: &std::path::Path,
) -> Vec<Process> {
    (0..count)
        .map(|i| {
            let servers = [masters[i % 2], masters[(i + 1) % 2]];
            spawn_worker_failover(&servers, 1, &identities.join(format!("w{i}.id")))
        })
        .collect()
}

/// A Prometheus series of the master at `base` (`http://host:port`): the sum of the values of
/// every line of `/metrics` that starts with `series` (a name, or a name with its first
/// labels), 0 when there is none.
pub async fn metric_sum(base: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A real `grid-worker` process with extra flags (`--bind 127.0.5.1`, ...).
pub fn spawn_worker_with(
    servers: &[&str],
    threads: u32,
    identity_file: &std::path::Path,
    flags: &[&str],
) -> Process {
    let child = Command::new(target_dir_binary("grid-worker"))
        .args(flags)
        .args([
            "--server",
            &servers.join(","),
            "--threads",
            &threads.to_string(),
        ])
        .arg("--identity-file")
        .arg(identity_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Process { child }
}

/// Minimal REST client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.to_owned(),
            token: token.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Send `request` with the token: the status and the JSON body (`null` if none).
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(&self.token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.client.delete(format!("{}{path}", self.base)))
            .await
    }

    /// `POST /api/v1/modules` with `bytes` declared as `content_type`.
    pub async fn upload(&self, bytes: Vec<u8>, content_type: &str) -> (u16, Value) {
        let request = self
            .client
            .post(format!("{}/api/v1/modules", self.base))
            .header("content-type", content_type)
            .body(bytes);
        self.send(request).await
    }

    /// Upload a module that must be accepted; its id.
    pub async fn upload_module(&self, bytes: Vec<u8>) -> String {
        let (status, body) = self.upload(bytes, "application/wasm").await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn submit(&self, body: Value) -> i64 {
        let (status, job) = self.post("/api/v1/jobs", &body).await;
        assert_eq!(status, 201, "{job}");
        job["id"].as_i64().unwrap()
    }

    /// Chunks of the job accepted so far; 0 while the master cannot answer (some tests
    /// restart it).
    pub async fn done_chunks(&self, id: i64) -> i64 {
        match self
            .client
            .get(format!("{}/api/v1/jobs/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
        {
            Ok(response) => response
                .json::<Value>()
                .await
                .map(|body| body["chunks"]["done"].as_i64().unwrap_or(0))
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Wait until at least `done` chunks of the job are accepted (bounded).
    pub async fn wait_progress(&self, id: i64, done: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while self.done_chunks(id).await < done {
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} makes no progress"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll the job until it reaches a final state (bounded).
    pub async fn wait_finished(&self, id: i64, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // The master may be restarting in some tests: tolerate refused connections.
            if let Ok(response) = self
                .client
                .get(format!("{}/api/v1/jobs/{id}", self.base))
                .bearer_auth(&self.token)
                .send()
                .await
                && let Ok(job) = response.json::<Value>().await
                && is_finished(&job)
            {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not finish within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The job finishes `failed`, every one of its `chunks` chunks with exactly `error`.
    pub async fn assert_all_failed_with(&self, job: i64, chunks: usize, error: &str) {
        let finished = self.wait_finished(job, Duration::from_secs(120)).await;
        assert_eq!(finished["state"], "failed", "{finished}");
        let results = self.results(job).await;
        assert_eq!(results.len(), chunks, "{results:?}");
        for line in &results {
            assert_eq!(line["error"], error, "{line}");
        }
    }

    /// The job finishes `done`: its outputs in index order, each agreed by `agreeing` workers.
    pub async fn outputs(&self, job: i64, agreeing: u64) -> Vec<Value> {
        let finished = self.wait_finished(job, Duration::from_secs(120)).await;
        assert_eq!(finished["state"], "done", "{finished}");
        let results = self.results(job).await;
        for (index, line) in results.iter().enumerate() {
            assert_eq!(line["index"], index, "{line}");
            assert_eq!(line["agreeing"], agreeing, "{line}");
        }
        results.iter().map(|line| line["output"].clone()).collect()
    }

    /// The NDJSON results, parsed.
    pub async fn results(&self, id: i64) -> Vec<Value> {
        let response = self
            .client
            .get(format!("{}/api/v1/jobs/{id}/results", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type, "application/x-ndjson");
        let text = response.text().await.unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// Whether a job view's state is one a job does not leave.
pub fn is_finished(job: &Value) -> bool {
    job["state"]
        .as_str()
        .and_then(|state| state.parse::<JobState>().ok())
        .is_some_and(JobState::is_finished)
}

/// The total the `primes` inputs should give, computed here with the same kernels.
pub fn primes_reference(inputs: &[Value]) -> u64 {
    inputs
        .iter()
        .map(|input| {
            grid_kernels::run("primes", input).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .sum()
}

/// Sum of the `count` outputs of `primes` results, after checking every index appears exactly
/// once, in order (and, with `agreeing`, that every chunk was agreed by that many workers).
pub fn primes_total(results: &[Value], chunks: u64, agreeing: Option<u64>) -> u64 {
    let indexes: Vec<u64> = results
        .iter()
        .map(|line| line["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        (0..chunks).collect::<Vec<_>>(),
        "every chunk exactly once, in index order"
    );
    if let Some(agreeing) = agreeing {
        for line in results {
            assert_eq!(line["agreeing"].as_u64(), Some(agreeing), "{line}");
        }
    }
    results
        .iter()
        .map(|line| {
            line["output"]["count"]
                .as_u64()
                .unwrap_or_else(|| panic!("{line}"))
        })
        .sum()
}

/// `count` primes chunks splitting [start, end) evenly.
pub fn primes_inputs(start: u64, end: u64, count: u64) -> Vec<Value> {
    let step = (end - start).div_ceil(count);
    (0..count)
        .map(|i| {
            let a = start + i * step;
            let b = (a + step).min(end);
            json!({"start": a, "end": b})
        })
        .collect()
}
