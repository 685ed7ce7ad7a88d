//! The native worker's integration tests, one binary: the session against a scripted master,
//! task modules (memory, fuel, time limits) and WASI command modules; `common` holds the
//! scripted master and the worker process fixtures.

mod common;

mod modules;
mod session;
mod wasi;
