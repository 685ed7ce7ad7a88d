//! `grid-server`, the master of the volunteer compute grid.
//!
//! # Layout
//! - [`config`]: command-line flags and environment ([`config::Config`]).
//! - [`api`]: the REST API (`/api/v1/...`) and health probes; [`auth`]: bearer tokens.
//! - [`session`]: one worker's WebSocket session at `/ws`.
//! - [`scheduler`]: the single task that owns leases and hands out work, committing each round
//!   as one batch; [`scheduler::dispatch`] is its in-memory cache of ready chunks.
//! - [`trust`]: everything that decides whom to believe: the quorum rule, the review of each
//!   commit (verdicts, reputation, blacklisting, backtracking) and the master's own checks.
//! - [`store`]: durable state behind the [`store::Store`] trait; [`store::postgres`] implements it.
//!   [`store::insights`] holds the read-mostly queries of dashboards and volunteers.
//! - [`inputs`]: a job's chunk inputs gathered one at a time under the limits (the streaming
//!   reader of a JSON submission's `inputs`); [`datasets`]: inputs from a Parquet, CSV or
//!   NDJSON file, one row per chunk.
//! - [`limits`]: the documented limits; [`error`]: the crate's error type and its HTTP mapping.
//! - [`export`]: a job's results as columns, a Parquet file or an Arrow IPC stream;
//!   [`lakehouse`]: results appended to Delta Lake tables (`file://`, `s3://`) when jobs
//!   finish, exactly once.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`network`]: which network a peer is on (quorum independence, per-network caps).
//! - [`admission`]: caps on open connections and worker sessions, globally and per peer.
//! - [`tls`]: HTTPS and WSS served directly (`--tls-cert`, `--tls-key`).
//! - [`web`]: the contribute page at `/` and its assets; the `Origin` check of `/ws`.
//! - [`quota`]: per-tenant quotas (open chunks, module bytes, submissions per minute);
//!   [`retention`]: the task deleting the results of jobs finished long ago.
//! - [`dashboard`]: the sampler behind the dashboard's live figures and the credit cache.
//! - [`masters`]: the other live masters sharing the database, named to workers for failover.
//!
//! [`serve`] is the entry point: it runs the master on a bound listener until `shutdown`
//! resolves. `main.rs` only reads configuration, sets up logging and binds.

pub mod admission;
pub mod api;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod datasets;
pub mod error;
pub mod export;
pub mod inputs;
pub mod lakehouse;
pub mod limits;
pub mod masters;
pub mod metrics;
pub mod network;
pub mod quota;
pub mod retention;
pub mod scheduler;
pub mod session;
pub mod store;
pub mod tls;
pub mod trust;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::TokenCache;
use crate::limits::Limits;
use crate::scheduler::SchedulerHandle;
use crate::store::Store;
use crate::store::insights::{Database, Insights};

/// Shared state of every handler and session.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The same database, for the read-mostly queries of dashboards and volunteers.
    pub insights: Arc<dyn Insights>,
    /// The dashboard's shared sampler and the credit cache.
    pub dashboard: dashboard::Feed,
    /// The scheduler's inbox.
    pub scheduler: SchedulerHandle,
    /// Documented limits.
    pub limits: Arc<Limits>,
    /// SHA-256 of the admin token, if one is configured.
    pub admin_token_hash: Option<[u8; 32]>,
    /// Recent answers about submitter tokens.
    pub tokens: TokenCache,
    /// Failed authentications per client network.
    pub auth_failures: Arc<auth::AuthFailures>,
    /// Flips to true when the master begins shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Which web origins may open worker sessions at `/ws`.
    pub origins: Arc<web::OriginPolicy>,
    /// Task modules recently downloaded by workers.
    pub module_cache: api::modules::ModuleCache,
    /// How peers are grouped into networks.
    pub networks: Arc<network::NetworkPolicy>,
    /// Open connections and worker sessions, against their caps.
    pub admission: Arc<admission::Admission>,
    /// Each submitter token's submissions per minute ([`quota`]).
    pub submissions: Arc<quota::SubmissionRate>,
    /// Which Delta tables jobs may name as their sink ([`lakehouse`]).
    pub sinks: Arc<lakehouse::SinkPolicy>,
    /// This master's advertised URL and the other live masters' ([`masters`]).
    pub masters: Arc<masters::MasterDirectory>,
}

/// Options of [`serve`] beyond the store and the listener.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The admin bearer token (kept only as a hash).
    pub admin_token: Option<String>,
    /// Limits on requests and worker messages.
    pub limits: Limits,
    /// Web origins allowed to open worker sessions besides the master's own (`scheme://host[:port]`,
    /// or `*` for any); requests without an `Origin` (native workers) are always allowed.
    pub allowed_origins: Vec<String>,
    /// How long a graceful shutdown waits for in-flight results (default 10 s).
    pub shutdown_grace: Option<std::time::Duration>,
    /// Plain voting: no spot-check ringers, no blacklisting, no backtracking (reputation is
    /// still recorded). For comparisons; see docs/trust.md.
    pub no_trust: bool,
    /// How peers are grouped into networks (distinct networks per quorum, trusted networks,
    /// proxies whose `X-Forwarded-For` counts).
    pub networks: network::NetworkPolicy,
    /// The master's own public origins (`scheme://host[:port]`): when given, pages of these
    /// origins (and of `allowed_origins`) may open worker sessions, and the request's `Host`
    /// no longer counts (DNS rebinding cannot pass the check). See [`web::OriginPolicy`].
    pub public_origins: Vec<String>,
    /// Serve HTTPS and WSS with this configuration ([`tls::server_config`]) instead of plain
    /// HTTP and WS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Delete the results of jobs finished longer ago than this ([`retention`]); `None`: keep
    /// them for ever.
    pub retention: Option<retention::RetentionPolicy>,
    /// Which Delta tables jobs may name as their sink, and how the master reaches them
    /// ([`lakehouse`]); the default admits none.
    pub sinks: lakehouse::SinkPolicy,
    /// The WebSocket URL other masters name to their workers for this one
    /// ([`masters::advertised_url`]); `None`: not advertised.
    pub advertise_url: Option<String>,
}

/// Default grace period of a graceful shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The complete HTTP router: REST API, health probes, the worker WebSocket and the
/// contribute page.
pub fn router(state: AppState) -> Router {
    routes_with(&state.limits.clone()).with_state(state)
}

/// Every route of the master, before its state is attached (the OpenAPI test lists them).
pub fn routes() -> Router<AppState> {
    routes_with(&Limits::default())
}

/// Every route of the master with these limits: bodies of at most
/// [`limits::DEFAULT_BODY_BYTES`] unless a route says otherwise (see [`api::v1`]), and the
/// request timeout on everything but streams and `/ws`.
fn routes_with(limits: &Limits) -> Router<AppState> {
    let bounded = Router::new()
        .merge(web::routes())
        .route("/api", get(api_not_found))
        .route("/healthz", get(api::health::healthz))
        .route("/readyz", get(api::health::readyz))
        .route("/metrics", get(metrics::scrape));
    api::with_timeout(bounded, limits.request_timeout)
        .nest("/api/v1", api::v1(limits))
        .route("/ws", get(worker_socket))
        .layer(DefaultBodyLimit::max(limits::DEFAULT_BODY_BYTES))
        // L10: no answer is sniffed into another type or framed by another site (pages also
        // carry their CSP, see web.rs).
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::X_FRAME_OPTIONS,
            axum::http::HeaderValue::from_static("DENY"),
        ))
}

async fn api_not_found() -> error::Error {
    error::Error::NotFound("route")
}

/// A worker's session: the WebSocket speaking the worker protocol (`grid-protocol`).
#[utoipa::path(
    get,
    operation_id = "worker_session",
    summary = "Open a worker session",
    path = "/ws",
    tag = "workers",
    responses(
        (status = 101, description = "Switching to the WebSocket worker protocol (JSON text frames)"),
        (status = 403, description = "A page of another origin may not open worker sessions", body = api::openapi::ErrorBody),
        (status = 429, description = "The master, or the peer's network, holds as many worker sessions as it may (`too_many_sessions`)", body = api::openapi::ErrorBody),
    )
)]
pub(crate) async fn worker_socket(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Browsers send Origin on every handshake: refuse pages of other sites (see web.rs).
    if !state.origins.allows(&headers, &uri) {
        // Debug only: a page can make its visitors' browsers retry in a loop (L4).
        let origin = headers.get(axum::http::header::ORIGIN);
        tracing::debug!(?origin, "refused a worker session from another origin");
        ::metrics::counter!("grid_sessions_refused_total", "reason" => "origin").increment(1);
        return error::Error::Forbidden("this origin may not open worker sessions here")
            .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // Routers driven without a listener (tests with `oneshot`) have no peer address: such a
    // session counts as the host's own.
    let peer_ip = peer.map_or(
        std::net::IpAddr::from([127, 0, 0, 1]),
        |Extension(ConnectInfo(addr))| state.networks.client_ip(addr, &headers),
    );
    let peer = session::Peer {
        network: state.networks.network_of(peer_ip),
        ip: peer_ip,
    };
    let permit = match state.admission.session(peer.network.as_deref()) {
        Ok(permit) => permit,
        Err(refused) => {
            ::metrics::counter!("grid_sessions_refused_total", "reason" => refused.label())
                .increment(1);
            let message = match refused {
                admission::Refused::Global => format!(
                    "the master holds {} worker sessions, its most; try again later",
                    state.limits.max_ws_sessions
                ),
                admission::Refused::PerPeer => format!(
                    "network {} holds {} worker sessions, the most one network may",
                    peer.network.as_deref().unwrap_or_default(),
                    state.limits.max_ws_sessions_per_network
                ),
            };
            return error::Error::TooMany {
                code: "too_many_sessions",
                message,
            }
            .into_response();
        }
    };
    let max = state.limits.max_ws_message_bytes;
    let shutdown = state.shutdown.clone();
    // tungstenite's default 128 KiB read buffer is zero-filled before every read and held per
    // connection: 4 KiB keeps an idle session at ~13 KiB (measured with 10,000 workers).
    ws.read_buffer_size(4 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session::run(socket, state, peer, shutdown, permit))
}

/// Run the master on `listener` until `shutdown` resolves: then stop accepting, close worker
/// sessions with a "going away" reason (their leases are handed back), give HTTP requests in
/// flight the grace period to finish, drop the connections still open, and return.
///
/// Connections are served by hyper's HTTP/1 server with a timer: a client must send a
/// request's headers within `header_read_timeout` of the connection opening or of its previous
/// response (so idle keep-alive connections close after that long), and the connection caps
/// of [`admission`] apply at accept time. With [`ServeOptions::tls`], each admitted connection
/// first completes its TLS handshake within that same timeout ([`tls`]), in its own task.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Database>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let insights: Arc<dyn Insights> = store.clone();
    let store: Arc<dyn Store> = store;
    let (scheduler, scheduler_task) = scheduler::spawn(store.clone(), options.no_trust);
    let drain = scheduler.clone();
    let store_for_drain = store.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(changes) = store.watch_changes() {
        tokio::spawn(scheduler::follow_changes(
            changes,
            scheduler.clone(),
            stop_rx.clone(),
        ));
    }
    if !options.no_trust {
        trust::master_checks::spawn(store.clone(), scheduler.clone(), stop_rx.clone());
    }
    if let Some(policy) = options.retention {
        retention::spawn(policy, store.clone(), stop_rx.clone());
    }
    let sinks = Arc::new(options.sinks);
    // Every master exports: a job submitted with a sink through a master started before its
    // roots were configured is still exported by the others.
    lakehouse::exporter::spawn(
        store.clone(),
        sinks.clone(),
        scheduler.master_id().clone(),
        stop_rx.clone(),
    );
    let directory = masters::MasterDirectory::new(options.advertise_url);
    masters::spawn(
        directory.clone(),
        store.clone(),
        scheduler.master_id().clone(),
        stop_rx.clone(),
    );
    let limits = Arc::new(options.limits);
    let state = AppState {
        masters: directory.clone(),
        submissions: Arc::new(quota::SubmissionRate::new(&limits)),
        sinks,
        dashboard: dashboard::Feed::new(store.clone(), insights.clone(), stop_rx.clone()),
        store,
        insights,
        scheduler,
        admission: Arc::new(admission::Admission::new(&limits)),
        limits: limits.clone(),
        admin_token_hash: options.admin_token.as_deref().map(auth::hash_token),
        tokens: TokenCache::default(),
        auth_failures: Arc::new(auth::AuthFailures::default()),
        shutdown: stop_rx,
        origins: Arc::new(web::OriginPolicy::with_public(
            &options.allowed_origins,
            &options.public_origins,
        )),
        module_cache: api::modules::ModuleCache::default(),
        networks: Arc::new(options.networks),
    };
    metrics::install();
    let admission = state.admission.clone();
    let networks = state.networks.clone();
    let mut app = router(state);
    let acceptor = options.tls.map(tokio_rustls::TlsAcceptor::from);
    if acceptor.is_some() {
        app = app.layer(SetResponseHeaderLayer::overriding(
            axum::http::header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static(tls::HSTS),
        ));
    }
    let grace = options.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let (withdraw_store, master_id) = (store_for_drain, drain.master_id().clone());
    let signal = async move {
        shutdown.await;
        // The others stop naming this master first, so the workers sent away at the end of
        // the drain reconnect to them, not back here.
        directory
            .withdraw(withdraw_store.as_ref(), &master_id)
            .await;
        // Stop assigning, give in-flight chunks the grace period to come back, then close
        // every session with "going away" so workers reconnect (to another master, or to
        // this one once restarted). Leases still out then are reissued.
        tracing::info!(?grace, "shutting down: no new assignments");
        let (drained_tx, drained) = tokio::sync::oneshot::channel();
        if drain
            .send(scheduler::Event::Drain {
                drained: drained_tx,
            })
            .await
        {
            match tokio::time::timeout(grace, drained).await {
                Ok(_) => tracing::info!("every in-flight result is in"),
                Err(_) => tracing::warn!("grace period over with leases outstanding"),
            }
        }
        let _ = stop_tx.send(true);
    };
    let mut signal = Box::pin(signal);

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let (close_tx, close_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = &mut signal => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors or the like: the error is the peer's or
                        // passes; do not spin on it.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let permit = match admission.connection(addr.ip(), &networks) {
                    Ok(permit) => permit,
                    Err(refused) => {
                        admission::refuse_connection(stream, refused);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let admitted = admission::Admitted::new(stream, permit);
                let router = app.clone();
                let service = hyper::service::service_fn(
                    move |mut request: axum::http::Request<hyper::body::Incoming>| {
                        // What `into_make_service_with_connect_info` gave handlers.
                        request.extensions_mut().insert(ConnectInfo(addr));
                        tower::ServiceExt::oneshot(router.clone(), request)
                    },
                );
                let mut closing = close_rx.clone();
                let (http, acceptor) = (http.clone(), acceptor.clone());
                let handshake_timeout = limits.header_read_timeout;
                connections.spawn(async move {
                    let transport = match acceptor {
                        None => tls::Transport::Plain(admitted),
                        Some(acceptor) => tokio::select! {
                            handshake = tls::handshake(&acceptor, admitted, handshake_timeout) => {
                                match handshake {
                                    Some(stream) => stream,
                                    None => return,
                                }
                            }
                            _ = closing.changed() => return,
                        },
                    };
                    let io = hyper_util::rt::TokioIo::new(transport);
                    let connection = http.serve_connection(io, service).with_upgrades();
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        result = connection.as_mut() => {
                            if let Err(error) = result {
                                tracing::debug!(%error, "connection ended with an error");
                            }
                        }
                        _ = closing.changed() => {
                            // Finish the request in flight, if any, then close.
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    drop(signal);
    // L8: requests in flight get the grace period; connections still open then are dropped
    // (a half-sent request must not hold the shutdown).
    let _ = close_tx.send(true);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => {
                tracing::warn!(open = connections.len(), "grace period over: dropping open connections");
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                break;
            }
            next = connections.join_next() => if next.is_none() { break },
        }
    }
    // Sessions have ended and queued their disconnects; let the scheduler commit them (it
    // stops once the last handle, the router's among them, is gone).
    drop(app);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), scheduler_task).await;
    Ok(())
}
