//! The `grid` CLI's integration tests, one binary: the binary end to end against a real master
//! and real workers (`cli`), and `grid run-local` (`run_local`); `common` holds the fixtures.

mod common;

mod cli;
mod run_local;
