//! [`Status`]: what a browser worker tells the page after every change that matters.
//!
//! It crosses to JavaScript as a plain object (camelCase keys); the page sums the figures of
//! its Web Workers and shows them.

use serde::Serialize;

/// Where the worker's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// Not started, or paused: no socket, no leases.
    Paused,
    /// Opening the socket or waiting for the welcome.
    Connecting,
    /// Welcomed: receiving and computing work.
    Connected,
    /// The connection was lost; the next attempt is scheduled.
    Reconnecting,
    /// The master refused us for good (e.g. another protocol version); no more attempts.
    Failed,
}

/// A snapshot of one browser worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Where the connection is.
    pub connection: Connection,
    /// Results sent since the worker was created (over all sessions).
    pub chunks_done: u64,
    /// Milliseconds spent computing chunks since the worker was created (for a task-module
    /// chunk: from its start to its answer, fetching and compiling included).
    pub compute_ms: f64,
    /// Assignments waiting in this session.
    pub queued: usize,
    /// When reconnecting: milliseconds until the next attempt.
    pub retry_in_ms: Option<f64>,
    /// Why the last session ended, if it ended badly.
    pub last_error: Option<String>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            connection: Connection::Paused,
            chunks_done: 0,
            compute_ms: 0.0,
            queued: 0,
            retry_in_ms: None,
            last_error: None,
        }
    }
}

impl Status {
    /// The JSON text handed to the page.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_in_camel_case() {
        let status = Status {
            connection: Connection::Reconnecting,
            chunks_done: 3,
            compute_ms: 12.5,
            queued: 1,
            retry_in_ms: Some(250.0),
            last_error: Some("closed".into()),
        };
        assert_eq!(
            status.to_json(),
            r#"{"connection":"reconnecting","chunksDone":3,"computeMs":12.5,"queued":1,"retryInMs":250.0,"lastError":"closed"}"#
        );
    }
}
