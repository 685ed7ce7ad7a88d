//! `cargo xtask <command>`: the two commands the README promises.
//!
//! - `cargo xtask run`: build and start the master — on the embedded database under
//!   `./grid-data`, or on PostgreSQL when `DATABASE_URL` is set — printing its URL and where
//!   the admin token is.
//! - `cargo xtask test`: make sure PostgreSQL runs, build every binary, run every test.
//!
//! - `cargo xtask build`: the web assets, then release binaries (what the Dockerfile runs).
//! - `cargo xtask python`: the Python virtual environment of the tests and benchmarks, set up;
//!   prints its interpreter.
//! - `cargo xtask modules`: the example task modules (`examples/`), built and checked against
//!   the task ABI into `<target>/task-modules/` (see `modules.rs`); `test` and `build` do it too.
//!
//! - Python packages the tests drive: one virtual environment (`python.rs`), passed to the
//!   tests as `GRID_PYTHON`.
//!
//! Everything a fresh machine lacks is installed here, with a message saying what and why.

mod modules;
mod python;
mod toolchains;
mod web;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("run") => run(&root, &args[1..]),
        Some("test") => test(&root, &args[1..]),
        Some("build") => build_release(&root),
        Some("python") => {
            println!("{}", python::ensure_venv(&root)?.display());
            Ok(())
        }
        Some("modules") => {
            let dir = modules::build_example_modules(&root)?;
            println!("{}", dir.display());
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask run [grid-server flags...] | cargo xtask test [test filter] \
                 | cargo xtask build | cargo xtask modules | cargo xtask python"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask lives inside the workspace")?
        .to_path_buf())
}

fn step(message: &str) {
    eprintln!("\x1b[1mxtask:\x1b[0m {message}");
}

fn status(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Start the local PostgreSQL cluster if nothing listens on 5432 and Debian's tools are here.
fn ensure_postgres() -> Result<()> {
    let address = "127.0.0.1:5432".parse().context("address")?;
    if TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
        return Ok(());
    }
    let versions = Path::new("/etc/postgresql");
    if !versions.is_dir() {
        bail!("PostgreSQL is not running on 127.0.0.1:5432 and is not installed; set DATABASE_URL");
    }
    for entry in std::fs::read_dir(versions)? {
        let version = entry?.file_name();
        step(&format!(
            "starting PostgreSQL {}",
            version.to_string_lossy()
        ));
        status(
            Command::new("pg_ctlcluster")
                .arg("--skip-systemctl-redirect")
                .arg(&version)
                .args(["main", "start"]),
        )?;
    }
    Ok(())
}

/// The web assets (embedded into `grid-server` at compile time), then release binaries.
fn build_release(root: &Path) -> Result<()> {
    web::build_web(root, true)?;
    modules::build_example_modules(root)?;
    step("building grid-server and grid-worker (release)");
    status(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "grid-server",
        "-p",
        "grid-worker",
    ]))
}

fn run(root: &Path, extra: &[String]) -> Result<()> {
    build_release(root)?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let binary = Path::new(&target).join("release/grid-server");
    match std::env::var("DATABASE_URL") {
        Ok(_) => step("DATABASE_URL is set: using PostgreSQL"),
        Err(_) => step("no DATABASE_URL: using the embedded database in ./grid-data"),
    }
    step(&format!("starting {} (Ctrl-C stops it)", binary.display()));
    status(Command::new(binary).args(extra))
}

fn test(root: &Path, filter: &[String]) -> Result<()> {
    ensure_postgres()?;
    // The contribute page is embedded into grid-server at compile time: build it first.
    web::build_web(root, true)?;
    // The module tests upload the examples from `<target>/task-modules/`.
    modules::build_example_modules(root)?;
    web::ensure_browser_tools(root)?;
    let python = python::ensure_venv(root)?;
    step("building every binary (end-to-end tests start them as processes)");
    status(Command::new("cargo").args(["build", "--workspace", "--bins"]))?;
    step("running every test");
    status(
        Command::new("cargo")
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(filter)
            .env("DATABASE_URL", database_url())
            .env("GRID_PYTHON", python),
    )
}
