//! `grid-server`: reads configuration, sets up logging, binds, and runs the master.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use grid_server::config::Config;
use grid_server::store::postgres::PgStore;
use grid_server::{ServeOptions, serve};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if config.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let store = PgStore::connect(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the database at {}",
                grid_server::config::redact_url(&config.database_url)
            )
        })?;
    let admin_token = match config.admin_token.clone() {
        Some(token) => token,
        None => {
            let token = grid_server::auth::new_token();
            println!("No GRID_ADMIN_TOKEN set; this run's admin token is: {token}");
            token
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // Tests and scripts read this line to learn the bound address.
    println!("grid-server listening on http://{address}");

    let options = ServeOptions {
        admin_token: Some(admin_token),
        ..ServeOptions::default()
    };
    serve(listener, Arc::new(store), options, shutdown_signal()).await
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
