//! Changes other masters made to a shared PostgreSQL, heard at once through `LISTEN/NOTIFY`.
//!
//! A trigger on `jobs` (migration `20261206000001_masters_talk`) calls `pg_notify` on
//! [`CHANNEL`] when a job is inserted, reopened (a finished job back to running after
//! backtracking) or cancelled, from whichever master's transaction did it; PostgreSQL delivers
//! the notice to every listener when that transaction commits, never before. [`listen`] keeps
//! one listening connection per master (from the pool, so it follows the primary after a
//! failover; sqlx's listener reconnects and subscribes again by itself) and turns the notices
//! into [`Change`]s for the scheduler: new work reaches idle workers on every master within a
//! round trip instead of the next one-second sweep, and a cancel made on another master
//! revokes this master's leases at once.
//!
//! Notices are hints. Any sent while the listener was reconnecting are lost, which is why the
//! scheduler's sweep still reloads its cache and reads recent cancellations every second.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use super::Change;

/// The notification channel of job changes.
pub const CHANNEL: &str = "grid_jobs";
/// How long to wait before listening again after the listener failed.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Changes buffered for the scheduler; more are dropped (hints, and the sweep catches up).
const BUFFER: usize = 1024;

/// Start listening; the receiver gets each change as its transaction commits. The task ends
/// when the receiver is dropped or the pool is closed.
pub fn spawn(pool: PgPool) -> mpsc::Receiver<Change> {
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(listen(pool, sender));
    receiver
}

async fn listen(pool: PgPool, sender: mpsc::Sender<Change>) {
    let mut listener = loop {
        if sender.is_closed() || pool.is_closed() {
            return;
        }
        match subscribe(&pool).await {
            Ok(listener) => break listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for other masters' changes; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    };
    loop {
        let notification = tokio::select! {
            notification = listener.recv() => notification,
            () = sender.closed() => return,
        };
        match notification {
            Ok(notification) => match parse(notification.payload()) {
                Some(change) => {
                    metrics::counter!("grid_peer_notifications_total").increment(1);
                    if sender.try_send(change).is_err() && sender.is_closed() {
                        return;
                    }
                }
                None => tracing::debug!(payload = notification.payload(), "unknown notice"),
            },
            Err(error) => {
                // The database went away (a restart, a failover): the next recv reconnects
                // through the pool, which by then points at the primary.
                if pool.is_closed() {
                    return;
                }
                tracing::debug!(%error, "listener lost its connection; reconnecting");
                tokio::time::sleep(RETRY_AFTER).await;
                // Whatever happened meanwhile was not heard: let the scheduler look.
                let _ = sender.try_send(Change::WorkAvailable);
            }
        }
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// A notice's payload, `work:<job id>` or `cancelled:<job id>`, as a change.
fn parse(payload: &str) -> Option<Change> {
    let (kind, job) = payload.split_once(':')?;
    let job: i64 = job.parse().ok()?;
    match kind {
        "work" => Some(Change::WorkAvailable),
        "cancelled" => Some(Change::Cancelled(job)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn payloads_parse_into_changes() {
        assert_eq!(parse("work:12"), Some(Change::WorkAvailable));
        assert_eq!(parse("cancelled:7"), Some(Change::Cancelled(7)));
        assert_eq!(parse("cancelled:x"), None);
        assert_eq!(parse("done:7"), None);
        assert_eq!(parse(""), None);
    }
}
