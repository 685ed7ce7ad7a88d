//! The Python client (`clients/python`, `grid_client`) against a real master on PostgreSQL
//! and two real `grid-worker` processes: its pytest suite (`clients/python/tests`) submits
//! kernel and module jobs, waits for them, reads their results (streamed and as pandas and
//! polars frames), maps, cancels, and checks every error it maps to an exception. Python comes
//! from `GRID_PYTHON` (`cargo xtask test` sets it to the test venv, where
//! `xtask/requirements-test.txt` installs pytest, pandas, polars, tqdm and the client).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{ADMIN_TOKEN, Backend, InProcessServer, spawn_worker};

/// How long the whole pytest run may take (it takes well under a minute).
const PYTEST_LIMIT: Duration = Duration::from_secs(600);

/// The test suite's Python, or a clear failure (never a skip).
fn python() -> PathBuf {
    match std::env::var_os("GRID_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => panic!(
            "GRID_PYTHON is not set: this test runs the Python client's pytest suite; run it \
             through `cargo xtask test` (which installs xtask/requirements-test.txt into a \
             virtual environment and sets GRID_PYTHON), or set GRID_PYTHON to \
             `cargo xtask python`'s interpreter"
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `<target>/task-modules`, where `cargo xtask modules` puts the example modules (test
/// executables live in `<target>/<profile>/deps`).
fn task_modules() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.ancestors().nth(3).unwrap().join("task-modules");
    assert!(
        dir.join("fibonacci.wasm").is_file() && dir.join("collatz.wasm").is_file(),
        "{} lacks the example modules: build them with `cargo xtask modules` (cargo xtask \
         test does)",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_passes_its_tests_against_a_real_master_and_workers() {
    let python = python();
    let modules = task_modules();
    let root = workspace_root();
    let client = root.join("clients/python");

    let server = InProcessServer::start(Backend::Postgres).await;
    let home = tempfile::tempdir().unwrap();
    let w1 = spawn_worker(&server.ws(), 1, &home.path().join("w1.id"));
    let w2 = spawn_worker(&server.ws(), 1, &home.path().join("w2.id"));

    let mut command = tokio::process::Command::new(&python);
    command
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rfE",
            "--durations=5",
        ])
        .arg(client.join("tests"))
        .current_dir(&root)
        .env("GRID_URL", server.http())
        .env("GRID_TOKEN", ADMIN_TOKEN)
        .env("GRID_MODULES", &modules)
        // The checkout's own client comes first, whatever the venv's editable install points
        // at (several clones may share one target directory and so one venv).
        .env("PYTHONPATH", &client)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {} (GRID_PYTHON): {error}", python.display()));
    let output = tokio::time::timeout(PYTEST_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("pytest did not finish within {PYTEST_LIMIT:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pytest failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    // Every test ran and passed: pytest's summary names passes only.
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.contains(" passed"))
        .unwrap_or_else(|| panic!("no pytest summary in:\n{stdout}"));
    for word in ["failed", "error", "skipped", "xfail", "deselected"] {
        assert!(!summary.contains(word), "{summary}\n{stdout}");
    }
    // Shown with --nocapture: the tests' dots, the slowest tests and the summary.
    println!("{stdout}");
    drop((w1, w2));
    server.stop().await;
}
