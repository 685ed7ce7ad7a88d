//! The master's integration tests, one binary built and linked once: one module per area (their
//! docs say what each covers), `common` the fixtures they share (fresh databases, masters
//! in-process and as processes, real `grid-worker` processes, protocol peers, a REST client).
//!
//! The tests of all modules run side by side, so none may change what the others share: a test
//! that restarts PostgreSQL lives in its own binary (`tests/postgres_restart.rs`); one that
//! measures memory measures a master process of its own, not this one.

#[macro_use]
mod common;

mod adversaries;
mod api;
mod bounded;
mod browser;
mod dashboard;
mod dashboard_browser;
mod datasets;
mod e2e;
mod fair_share;
mod faults;
mod hello_work;
mod job_counters;
mod lakehouse;
mod modules;
mod modules_e2e;
mod openapi;
mod operations;
mod protocol;
mod python_client;
mod results_columns;
mod scale_out;
mod streams;
mod submit_memory;
mod tenants;
mod transport;
mod trust;
