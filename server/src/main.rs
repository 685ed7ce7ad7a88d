//! `grid-server`: reads configuration, sets up logging, opens the store, binds, and runs the
//! master until Ctrl-C or SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use grid_server::config::{Command, Config, redact_url};
use grid_server::store::insights::Database;
use grid_server::store::postgres::PgStore;
use grid_server::store::sqlite::SqliteStore;
use grid_server::{ServeOptions, serve};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only the few lines a script may read (the address).
    if config.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }

    if let Some(Command::Backup { to }) = &config.command {
        if config.database_url.is_some() {
            anyhow::bail!(
                "backup copies the embedded database; for PostgreSQL use pg_dump or pg_basebackup (see the README)"
            );
        }
        let bytes = SqliteStore::backup(&config.data_dir, to)
            .await
            .with_context(|| format!("cannot back up {}", config.data_dir.display()))?;
        println!(
            "backed up {} to {} ({bytes} bytes)",
            config.data_dir.join("grid.db").display(),
            to.display()
        );
        return Ok(());
    }

    let (store, admin_token): (Arc<dyn Database>, String) = match &config.database_url {
        Some(url) => {
            let store = PgStore::connect(url)
                .await
                .with_context(|| format!("cannot open the database at {}", redact_url(url)))?;
            let token = match &config.admin_token {
                Some(token) => token.clone(),
                None => stored_admin_token(&config.data_dir)?,
            };
            tracing::info!(database = %redact_url(url), "using PostgreSQL");
            (Arc::new(store), token)
        }
        None => {
            let store = SqliteStore::open(&config.data_dir).await.with_context(|| {
                format!(
                    "cannot open the embedded database in {}",
                    config.data_dir.display()
                )
            })?;
            let token = match &config.admin_token {
                Some(token) => token.clone(),
                None => stored_admin_token(&config.data_dir)?,
            };
            tracing::info!(data_dir = %config.data_dir.display(), "using the embedded database");
            (Arc::new(store), token)
        }
    };

    // Bearer tokens arrive trimmed, so a token configured with stray whitespace (a file's
    // newline) must be trimmed too. L1: a guessable one is refused before anything listens.
    let admin_token = admin_token.trim().to_owned();
    grid_server::auth::check_admin_token(&admin_token)
        .map_err(|error| anyhow::anyhow!("refusing to start: {error}"))?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            grid_server::tls::server_config(cert, key)
                .map_err(|error| anyhow::anyhow!("cannot serve TLS: {error}"))?,
        ),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };

    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // Tests and scripts read this line to learn the bound address.
    println!("grid-server listening on {scheme}://{address}");
    let advertise_url = grid_server::masters::advertised_url(
        config.advertise_url.as_deref(),
        &config.public_origin,
        address,
        tls.is_some(),
    )
    .map_err(|error| anyhow::anyhow!("refusing to start: {error}"))?;

    let options = ServeOptions {
        admin_token: Some(admin_token),
        allowed_origins: config.allowed_origins.clone(),
        shutdown_grace: Some(std::time::Duration::from_secs(config.shutdown_grace)),
        no_trust: config.no_trust,
        networks: config
            .network_policy()
            .map_err(|error| anyhow::anyhow!("invalid network settings: {error}"))?,
        limits: fit_open_files(config.limits()),
        public_origins: config.public_origin.clone(),
        advertise_url,
        tls,
        retention: config.retention(),
        sinks: config
            .sinks()
            .map_err(|error| anyhow::anyhow!("invalid sink settings: {error}"))?,
    };
    serve(listener, store, options, shutdown_signal()).await
}

/// Connections the kernel may hold for the accept loop (capped by `net.core.somaxconn`): a
/// burst of connections beyond it loses SYNs, everyone's alike, for a second each.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind `address` with a deep accept queue.
fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// File descriptors kept aside from connections: the database pool, the embedded database's
/// files, logs.
const RESERVED_FILES: u64 = 256;

/// Raise the soft open-file limit as far as the hard limit allows, and lower the connection cap
/// to fit under it, so the accept loop refuses connections before the process runs out of
/// descriptors (and the database with it).
fn fit_open_files(mut limits: grid_server::limits::Limits) -> grid_server::limits::Limits {
    let wanted = (limits.max_connections as u64).saturating_add(RESERVED_FILES);
    let available = match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            return limits;
        }
    };
    if available < wanted {
        let fits = usize::try_from(available.saturating_sub(RESERVED_FILES))
            .unwrap_or(usize::MAX)
            .max(1);
        tracing::warn!(
            open_file_limit = available,
            max_connections = fits,
            "the open-file limit is below --max-connections plus {RESERVED_FILES}: lowering the connection cap (raise ulimit -n to allow more)"
        );
        limits.max_connections = fits;
    }
    limits
}

/// The admin token when none is configured: generated on first start and kept (readable by
/// the owner only) in `<data-dir>/admin-token`, so it survives restarts. The token itself is
/// never printed (L1: stdout ends up in container logs), only where it is.
fn stored_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            owner_only(&path)?;
            println!(
                "Admin token: in {} (GRID_ADMIN_TOKEN overrides it)",
                path.display()
            );
            return Ok(token);
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let token = grid_server::auth::new_token();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above applies only to a file this call creates (an empty one may exist).
    owner_only(&path)?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    println!(
        "Generated an admin token and saved it in {} (GRID_ADMIN_TOKEN overrides it)",
        path.display()
    );
    Ok(token)
}

/// Make `path` readable and writable by its owner only (an existing file keeps its mode
/// otherwise).
fn owner_only(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
