//! `grid-worker`: the native worker of the volunteer compute grid, for machines without a
//! person at them. It connects to a master's WebSocket endpoint, says how many chunks it
//! computes at once, runs the assigned chunks with the same `grid-kernels` the browser worker
//! uses, or with the submitter's own WebAssembly task module under wasmtime, and sends back
//! the results.
//!
//! # Layout
//!
//! - [`run`] (this file): the reconnect loop, with failover across several masters and
//!   [`Backoff`] between attempts.
//! - [`masters`]: [`Masters`], the rotation of masters: those given, then those the masters
//!   named in their welcomes. The entry point; `main.rs` only adds the command line,
//!   logging and signals.
//! - [`config`]: [`WorkerConfig`], everything [`run`] needs.
//! - [`identity`]: [`Identity`], the persistent worker id and the file lock that keeps two
//!   workers on one machine from sharing it.
//! - `session`: one WebSocket session (hello, welcome, assignments, module fetches, results,
//!   heartbeats, revokes, graceful drain).
//! - [`compute`]: running one chunk ([`compute::run_chunk`]) on a blocking thread, a built-in
//!   kernel or a task module.
//! - [`sandbox`]: [`Sandbox`], the wasmtime engine that compiles task modules, and
//!   [`sandbox::TaskModule::run`], one chunk under the job's time and memory limits.
//! - [`module_cache`]: [`ModuleCache`], modules downloaded from the master by id, verified and
//!   compiled once per worker.
//! - [`Backoff`] (from `grid_protocol::backoff`, shared with the browser worker and
//!   `grid-loadgen`): exponential reconnect delays with full jitter.
//! - `shutdown`: the caller's shutdown future, shared by the reconnect loop and the session.
//! - [`error`]: [`WorkerError`], everything that ends a session or the worker, and
//!   [`ModuleError`], a module that could not be fetched (its lease goes back to the master).
//!
//! # Shutdown
//!
//! [`run`] takes a shutdown future (mini-redis style). When it completes during a session the
//! worker drains: it tells the master `Drain`, gives back queued assignments with `Release`,
//! lets running chunks finish and sends their results, closes the socket normally and returns
//! `Ok(())`. With no session connected it returns at once.

pub mod compute;
pub mod config;
pub mod error;
pub mod identity;
pub mod masters;
pub mod module_cache;
pub mod sandbox;
mod session;
mod shutdown;

use std::future::Future;

use tracing::{Instrument, info, info_span, warn};

pub use config::WorkerConfig;
pub use error::{ModuleError, WorkerError};
pub use grid_protocol::backoff::Backoff;
pub use identity::Identity;
pub use masters::Masters;
pub use module_cache::ModuleCache;
pub use sandbox::Sandbox;
pub use session::VERSION_MISMATCH_CODES;

use compute::ComputeSlots;
use session::SessionEnd;
use shutdown::Shutdown;

/// Work for the masters in `config.servers` until `shutdown` completes.
///
/// Connects to the first server; whenever a connection fails or is lost, waits a jittered,
/// growing delay ([`Backoff`], reset once a master has welcomed the worker) and tries the next
/// server, round robin: the configured ones, then the other live masters the last welcome
/// named ([`Masters`]), so one URL is enough to follow a group of masters. Returns `Ok(())` after a graceful shutdown, or an error that
/// reconnecting cannot fix: an invalid `config`, or a master that speaks another protocol
/// version ([`WorkerError::is_fatal`]).
pub async fn run<F>(config: WorkerConfig, shutdown: F) -> Result<(), WorkerError>
where
    F: Future<Output = ()>,
{
    config.validate()?;
    // wss:// and https:// module downloads: the Mozilla roots and `--ca-cert`.
    let tls = std::sync::Arc::new(
        grid_protocol::tls::client_config(config.ca_cert.as_deref())
            .map_err(WorkerError::Config)?,
    );
    let signal = std::pin::pin!(shutdown);
    let mut shutdown = Shutdown::new(signal);
    let slots = ComputeSlots::new(config.threads, config.max_memory_mb);
    info!(
        threads = config.threads,
        max_memory_mb = config.max_memory_mb,
        "compute slots and the memory budget of module chunks"
    );
    // Kept across sessions and masters: module ids are content addresses.
    let modules = ModuleCache::new(config.connect_timeout).with_tls((*tls).clone());
    let mut backoff = Backoff::new(config.reconnect_initial, config.reconnect_max);

    let mut masters = Masters::new(config.servers.clone());
    let named = masters::Named::default();
    let http = reqwest::Client::builder()
        .user_agent(concat!("grid-worker/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.connect_timeout)
        .use_preconfigured_tls((*tls).clone())
        .build()
        .map_err(|error| WorkerError::Config(format!("cannot build an HTTP client: {error}")))?;
    loop {
        if let Some(list) = named.take() {
            masters.learn(&list);
        }
        let url = masters.next_master();
        let span = info_span!("session", server = %url);
        let refresher = tokio::spawn(masters::refresh(
            http.clone(),
            url.clone(),
            config.masters_refresh,
            named.clone(),
        ));
        let end = session::run(&url, &config, &slots, &modules, &tls, &named, &mut shutdown)
            .instrument(span)
            .await;
        refresher.abort();
        let end = end?;
        match end {
            SessionEnd::Shutdown => {
                info!("stopped");
                return Ok(());
            }
            SessionEnd::Lost { welcomed, reason } => {
                if welcomed {
                    backoff.reset();
                    warn!(server = %url, error = %reason, "session lost");
                } else {
                    warn!(server = %url, error = %reason, "no session with this master");
                }
            }
        }
        let delay = backoff.next_delay(rand::random());
        info!(
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "reconnecting"
        );
        tokio::select! {
            () = shutdown.wait() => {
                info!("stopped");
                return Ok(());
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
}
