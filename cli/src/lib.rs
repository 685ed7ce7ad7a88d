//! `grid`: the submitter's command line for a grid master. It speaks only the documented REST
//! API (`/api/v1`), so everything it does can also be done with curl.
//!
//! # Layout
//!
//! - [`args`]: the command line ([`Cli`]), clap derive, one struct per subcommand.
//! - [`run`] (this file): builds the [`Client`] and dispatches to [`commands`]; `main.rs` only
//!   parses arguments, prints the error and picks the exit code.
//! - [`commands`]: one file per subcommand (`submit`, `status`, `results`, `cancel`, `jobs`,
//!   `upload`, `token`, and `run_local`, which needs no master: it runs a module with the
//!   native worker's own sandbox, `grid_worker::sandbox`).
//! - [`client`]: [`Client`], HTTP with the bearer token; API error bodies become [`Error`]s.
//! - [`inputs`]: a job's inputs from a JSON array, NDJSON, stdin or `--range`, written
//!   straight into the request body.
//! - [`range`]: `A..B` and splitting it into `--chunks` pieces.
//! - [`job`]: the API's job and how it is printed (summary, table).
//! - [`error`]: [`Error`] and the exit codes.
//!
//! The master URL comes from `--url` / `GRID_URL` (default `http://127.0.0.1:8080`), the token
//! from `--token` / `GRID_TOKEN`.

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod inputs;
pub mod job;
pub mod range;

pub use args::Cli;
pub use client::Client;
pub use error::{Error, Result};

use args::Command;

/// Run one command line. Everything the command prints goes to stdout; the caller prints the
/// error, if any, and exits with [`Error::exit_code`].
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::RunLocal(args) = cli.command {
        return commands::run_local::run(args).await;
    }
    let client = Client::trusting(&cli.url, cli.token.as_deref(), cli.ca_cert.as_deref())?;
    match cli.command {
        Command::Submit(args) => commands::submit::run(&client, *args).await,
        Command::Status(args) => commands::status::run(&client, args).await,
        Command::Results(args) => commands::results::run(&client, args).await,
        Command::Cancel(args) => commands::cancel::run(&client, args).await,
        Command::Jobs(args) => commands::jobs::run(&client, args).await,
        Command::Upload(args) => commands::upload::run(&client, args).await,
        Command::Token(command) => commands::token::run(&client, command).await,
        Command::RunLocal(_) => Ok(()),
    }
}
