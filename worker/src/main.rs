//! `grid-worker`: command line, logging and signals around [`grid_worker::run`].

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use grid_protocol::MAX_SLOTS;
use grid_worker::{Identity, WorkerConfig};
use tracing_subscriber::EnvFilter;
use url::Url;

/// Volunteer this machine's cores to a grid master.
#[derive(Debug, Parser)]
#[command(name = "grid-worker", version, about)]
struct Args {
    /// Master WebSocket URL, e.g. ws://HOST:PORT/ws. Repeat (or separate with commas) to
    /// fail over between masters.
    #[arg(
        long = "server",
        value_name = "URL",
        env = "GRID_SERVER",
        value_delimiter = ',',
        required = true
    )]
    servers: Vec<Url>,

    /// Chunks computed at once [default: the number of available cores].
    #[arg(
        long,
        value_name = "N",
        env = "GRID_WORKER_THREADS",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SLOTS))
    )]
    threads: Option<u32>,

    /// File holding this worker's persistent id (created if missing). Default: the first free
    /// identity-N in $GRID_WORKER_HOME, $XDG_DATA_HOME/grid-worker or
    /// ~/.local/share/grid-worker.
    #[arg(long, value_name = "PATH")]
    identity_file: Option<PathBuf>,

    /// Local IP address to connect to the master from (e.g. one of several addresses of this
    /// machine) [default: chosen by the operating system].
    #[arg(long, value_name = "ADDR", env = "GRID_WORKER_BIND")]
    bind: Option<IpAddr>,

    /// Memory budget of task-module chunks: the `max_memory_mb` caps of the chunks running at
    /// once add up to at most this. MiB, or with a unit: 512MiB, 6G, 1073741824B
    /// [default: half of the physical memory].
    #[arg(
        long,
        value_name = "SIZE",
        env = "GRID_WORKER_MAX_MEMORY",
        value_parser = grid_worker::config::parse_memory_size
    )]
    max_memory: Option<u64>,

    /// PEM file of certificate authorities to trust for wss:// masters besides the Mozilla
    /// roots: a private CA, or the master's self-signed certificate.
    #[arg(long, value_name = "PEM", env = "GRID_CA_CERT")]
    ca_cert: Option<PathBuf>,

    /// Seconds between asking the master for the other live masters to fail over to (besides
    /// the list in its welcome); each wait is jittered by up to a quarter.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    masters_refresh_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing();

    // Held until the process ends: the lock keeps other workers off this identity.
    let identity = Identity::resolve(args.identity_file.as_deref())?;
    let mut config = WorkerConfig::new(args.servers, identity.worker_id());
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    config.bind = args.bind;
    config.ca_cert = args.ca_cert;
    config.masters_refresh = std::time::Duration::from_secs(args.masters_refresh_secs);
    if let Some(max_memory_mb) = args.max_memory {
        config.max_memory_mb = max_memory_mb;
    }
    let servers: Vec<&str> = config.servers.iter().map(Url::as_str).collect();
    // The identity is a bearer secret (it names the volunteer's credit): print where it is,
    // never the identity itself, so it does not end up in service logs.
    println!(
        "grid-worker (identity in {}) with {} threads → {}",
        identity.path().display(),
        config.threads,
        servers.join(", ")
    );

    grid_worker::run(config, shutdown_signal())
        .await
        .context("grid-worker stopped")?;
    drop(identity);
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); `GRID_LOG_FORMAT=json` gives one
/// JSON object per line.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("GRID_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Completes on the first Ctrl-C or SIGTERM, which starts a graceful drain; a second one
/// exits at once.
async fn shutdown_signal() {
    signal().await;
    tracing::info!("shutdown requested; finishing running chunks (signal again to quit now)");
    tokio::spawn(async {
        signal().await;
        eprintln!("grid-worker: interrupted again, exiting without draining");
        std::process::exit(130);
    });
}

/// The next Ctrl-C (SIGINT) or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
