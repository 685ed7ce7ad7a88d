//! `grid status ID`: print a job; while watching, follow it with a progress bar first.
//!
//! Watching (`--watch`, and the default when both stdout and stderr are terminals; `--no-watch`
//! turns it off) polls `GET /api/v1/jobs/{id}` every `--interval` seconds and draws chunks
//! done out of total on stderr until the job is `done`, `failed` or `cancelled`. The master
//! may restart meanwhile: unreachable-master and 5xx answers are retried for up to a minute.
//! The command exits 3 ([`Error::JobEnded`]) when the job it prints ended `failed` or
//! `cancelled`, watched or not.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::args::StatusArgs;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::job::Job;

/// How long the master may stay unreachable while watching before giving up.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(60);
/// The shortest poll interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Print the job (after following it, when watching).
pub async fn run(client: &Client, args: StatusArgs) -> Result<()> {
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|interval| *interval >= MIN_INTERVAL)
        .ok_or_else(|| {
            Error::Usage(format!(
                "--interval must be at least {} seconds, got {}",
                MIN_INTERVAL.as_secs_f64(),
                args.interval
            ))
        })?;
    let watch = args.watch
        || (!args.no_watch && std::io::stdout().is_terminal() && std::io::stderr().is_terminal());
    let mut job = fetch(client, args.id).await?;
    if watch && !job.0.is_final() {
        job = follow(client, job, interval).await?;
    }
    let (job, raw) = job;
    if args.json {
        let text = serde_json::to_string_pretty(&raw).unwrap_or_else(|_| raw.to_string());
        super::print_line(&text)?;
    } else {
        super::print_line(&job.summary())?;
    }
    if job.is_unsuccessful() {
        return Err(Error::JobEnded {
            id: job.id,
            state: job.state,
        });
    }
    Ok(())
}

/// The job, decoded and as the API sent it.
async fn fetch(client: &Client, id: i64) -> Result<(Job, Value)> {
    let path = format!("/api/v1/jobs/{id}");
    let raw: Value = client.get_json(&path).await?;
    let job = Job::deserialize(&raw).map_err(|error| Error::Response {
        url: client.url(&path),
        detail: error.to_string(),
    })?;
    Ok((job, raw))
}

/// Poll until the job is final, drawing progress on stderr (hidden when stderr is not a
/// terminal).
async fn follow(
    client: &Client,
    mut job: (Job, Value),
    interval: Duration,
) -> Result<(Job, Value)> {
    let bar = ProgressBar::new(job.0.chunks.total);
    let style = ProgressStyle::with_template(
        "{spinner:.green} job {prefix} [{elapsed_precise}] {wide_bar:.cyan/blue} \
         {pos}/{len} chunks · eta {eta} · {msg}",
    )
    .map(|style| style.progress_chars("█▉▊▋▌▍▎▏ "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(job.0.id.to_string());
    show(&bar, &job.0);
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut unreachable_since: Option<Instant> = None;
    while !job.0.is_final() {
        tokio::time::sleep(interval).await;
        match fetch(client, job.0.id).await {
            Ok(latest) => {
                unreachable_since = None;
                job = latest;
                show(&bar, &job.0);
            }
            Err(error) if is_transient(&error) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_GRACE {
                    bar.abandon();
                    return Err(error);
                }
                bar.set_message(format!("{error}; retrying"));
            }
            Err(error) => {
                bar.abandon();
                return Err(error);
            }
        }
    }
    bar.finish_and_clear();
    Ok(job)
}

fn show(bar: &ProgressBar, job: &Job) {
    bar.set_length(job.chunks.total);
    bar.set_position(job.chunks.done);
    let mut message = job.state.to_string();
    if job.chunks.failed > 0 {
        message.push_str(&format!(", {} failed", job.chunks.failed));
    }
    bar.set_message(message);
}

/// Failures worth waiting out: the master restarting, or a proxy in front of it.
fn is_transient(error: &Error) -> bool {
    match error {
        Error::Connect { .. } => true,
        Error::Api { status, .. } => *status >= 500,
        Error::Http { status, .. } => status.is_server_error(),
        _ => false,
    }
}
