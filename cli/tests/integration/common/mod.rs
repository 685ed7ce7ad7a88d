//! Helpers for the `grid` end-to-end tests: a real master in-process (embedded SQLite in a
//! temporary directory, from `grid-test-support`), real native workers in-process, and the
//! real `grid` binary.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use grid_test_support::{Backend, InProcessServer};
use grid_worker::WorkerConfig;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use grid_test_support::ADMIN_TOKEN;

/// How long one `grid` invocation may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A worker running in the background that stops when told.
struct Stoppable {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Stoppable {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A master and its workers, all inside the test process.
pub struct Grid {
    pub addr: SocketAddr,
    master: InProcessServer,
    workers: Vec<Stoppable>,
}

impl Grid {
    /// A master on a fresh embedded database, with `workers` native workers (two slots each,
    /// distinct ids) connecting to it. The listener is bound before anything is spawned.
    pub async fn start(workers: usize) -> Grid {
        let master = InProcessServer::start(Backend::Sqlite).await;
        let ws = url::Url::parse(&master.ws()).unwrap();
        let workers = (0..workers)
            .map(|n| {
                let mut config = WorkerConfig::new(vec![ws.clone()], format!("cli-test-{n}"));
                config.threads = 2;
                config.reconnect_initial = Duration::from_millis(50);
                let (stop, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(async move {
                    grid_worker::run(config, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
                });
                Stoppable { stop, task }
            })
            .collect();
        Grid {
            addr: master.addr,
            master,
            workers,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Run `grid` against this master.
    pub async fn grid(&self, token: &str, args: &[&str]) -> Run {
        grid(&self.url(), Some(token), args, None).await
    }

    pub async fn stop(self) {
        for worker in self.workers {
            worker.stop().await;
        }
        self.master.stop().await;
    }
}

/// What one `grid` invocation did.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A `grid` command: GRID_URL and GRID_TOKEN from the arguments, never from the environment
/// the tests run in.
pub fn grid_command(url: &str, token: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_grid"));
    command
        .args(args)
        .env("GRID_URL", url)
        .env_remove("GRID_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("GRID_TOKEN", token);
    }
    command
}

/// Run `grid` to the end, feeding `stdin` if given.
pub async fn grid(url: &str, token: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut command = grid_command(url, token, args);
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().unwrap();
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(bytes).await.unwrap();
        drop(pipe);
    }
    finish(child, args).await
}

/// Wait for a spawned `grid` and collect what it printed.
pub async fn finish(child: tokio::process::Child, args: &[&str]) -> Run {
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("grid {args:?} did not finish within {COMMAND_TIMEOUT:?}"))
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

impl Run {
    /// Assert success and return stdout without its trailing newline.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{self:#?}");
        self.stdout.trim_end_matches('\n')
    }

    /// Assert the exit code and return stderr.
    pub fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:#?}");
        &self.stderr
    }
}
