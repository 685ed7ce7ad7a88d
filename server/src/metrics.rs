//! Prometheus metrics at `/metrics`: what a host watches to see the grid breathe.
//!
//! Counters and histograms are recorded where things happen (the scheduler, the store calls)
//! through the `metrics` facade; gauges of chunks by state are read from the database at
//! scrape time. Names:
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `grid_results_total` | counter | results recorded (rate() = results per second) |
//! | `grid_results_rejected_total` | counter | results refused (lease not held or no longer live) |
//! | `grid_chunks_decided_total{outcome}` | counter | chunks `accepted` or `failed` |
//! | `grid_replica_verdicts_total{verdict}` | counter | returned replicas judged `valid` / `invalid` |
//! | `grid_lease_ends_total{reason}` | counter | leases ended without a result: `deadline`, `worker_gone`, `released`, `revoked` |
//! | `grid_leases_issued_total` | counter | leases created |
//! | `grid_workers_connected{kind}` | gauge | open worker sessions, `native` / `browser` |
//! | `grid_chunks{state}` | gauge | chunks `open`, `done`, `failed`, `cancelled` |
//! | `grid_db_commit_seconds` | histogram | latency of one scheduler commit (one transaction) |
//! | `grid_scheduler_batch_events` | histogram | results + lease changes committed per round |
//! | `grid_connections_open` | gauge | open TCP connections (see [`crate::admission`]) |
//! | `grid_connections_refused_total{reason}` | counter | connections closed at accept: `global` or `per_peer` cap |
//! | `grid_sessions_refused_total{reason}` | counter | `/ws` upgrades answered 429: `global` or `per_peer` cap |
//! | `grid_quota_refusals_total{quota}` | counter | requests refused over a tenant quota (`max_open_chunks`, `max_module_bytes`, `max_submissions_per_minute`) |
//! | `grid_retention_rows_deleted_total` | counter | replica and chunk rows the retention deleted |
//! | `grid_retention_jobs_purged_total` | counter | jobs whose results the retention deleted completely |
//! | `grid_sessions_closed_total{reason}` | counter | sessions ended, by the error code sent (`slow_reader`, `too_many_refusals`, ...) or `peer` |

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::error::Result;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder (once per process; several in-process masters in tests
/// share it). Returns None if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("grid_db_commit_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("grid_scheduler_batch_events".into()),
                        &[
                            1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
                        ],
                    )
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(error) => {
                    tracing::warn!(%error, "metrics disabled");
                    return None;
                }
            };
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => None,
            }
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        "grid_quota_refusals_total",
        "Requests refused over a tenant quota."
    );
    metrics::describe_counter!(
        "grid_retention_rows_deleted_total",
        "Replica and chunk rows deleted by the retention."
    );
    metrics::describe_counter!(
        "grid_retention_jobs_purged_total",
        "Jobs whose results the retention deleted."
    );
    metrics::describe_counter!("grid_results_total", "Results recorded.");
    metrics::describe_counter!(
        "grid_peer_notifications_total",
        "Submissions, reopenings and cancels of other masters heard through LISTEN/NOTIFY."
    );
    metrics::describe_counter!(
        "grid_database_failovers_total",
        "Times the database pool moved to a new PostgreSQL primary."
    );
    metrics::describe_counter!("grid_results_rejected_total", "Results refused.");
    metrics::describe_counter!("grid_chunks_decided_total", "Chunks accepted or failed.");
    metrics::describe_counter!(
        "grid_replica_verdicts_total",
        "Returned replicas judged valid or invalid."
    );
    metrics::describe_counter!(
        "grid_lease_ends_total",
        "Leases ended without a result, by reason."
    );
    metrics::describe_counter!("grid_leases_issued_total", "Leases created.");
    metrics::describe_gauge!("grid_workers_connected", "Open worker sessions by kind.");
    metrics::describe_gauge!("grid_connections_open", "Open TCP connections.");
    metrics::describe_counter!(
        "grid_connections_refused_total",
        "Connections closed at accept, over the global or per-address cap."
    );
    metrics::describe_counter!(
        "grid_sessions_refused_total",
        "Worker sessions refused: 429 over the global or per-network cap, 403 for another origin."
    );
    metrics::describe_counter!(
        "grid_auth_failures_total",
        "Requests with a bearer token the master does not know (401)."
    );
    metrics::describe_counter!(
        "grid_tls_handshakes_failed_total",
        "TLS handshakes that failed or did not finish within the header timeout."
    );
    metrics::describe_counter!(
        "grid_sessions_closed_total",
        "Worker sessions ended, by the reason sent or peer."
    );
    metrics::describe_gauge!("grid_chunks", "Chunks by state.");
    metrics::describe_histogram!(
        "grid_db_commit_seconds",
        metrics::Unit::Seconds,
        "Latency of one scheduler commit."
    );
    metrics::describe_histogram!(
        "grid_scheduler_batch_events",
        "Results and lease changes committed per scheduler round."
    );
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    operation_id = "metrics",
    summary = "Prometheus metrics",
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn scrape(State(state): State<AppState>) -> Result<impl IntoResponse> {
    for (chunk_state, count) in state.store.chunk_states().await? {
        metrics::gauge!("grid_chunks", "state" => chunk_state.as_str()).set(count as f64);
    }
    let body = install().map(PrometheusHandle::render).unwrap_or_default();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    ))
}
