//! [`WorkerConfig`]: what [`crate::run`] needs to know. Filled from the command line by
//! `main.rs`; tests build it with [`WorkerConfig::new`] and adjust the fields.

use std::net::IpAddr;
use std::time::Duration;

use grid_protocol::{MAX_SLOTS, is_valid_worker_id};
use url::Url;

use crate::WorkerError;

/// Settings of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Master WebSocket endpoints (`ws://` or `wss://`, e.g. `ws://host:8080/ws`). The worker
    /// uses one at a time and moves to the next when a connection fails or is lost.
    pub servers: Vec<Url>,
    /// Chunks computed at once, one blocking thread each; announced to the master as `slots`
    /// (1 to [`MAX_SLOTS`]).
    pub threads: u32,
    /// The persistent identity sent in every hello (see [`crate::Identity`]).
    pub worker_id: String,
    /// Ceiling of the first reconnect delay; doubles per failed attempt.
    pub reconnect_initial: Duration,
    /// Largest reconnect delay ceiling.
    pub reconnect_max: Duration,
    /// How long a connection attempt (TCP, TLS and WebSocket handshake) may take.
    pub connect_timeout: Duration,
    /// How long to wait for the master's welcome after the hello.
    pub welcome_timeout: Duration,
    /// On graceful shutdown, how long to wait for the master to answer our close frame.
    pub close_timeout: Duration,
    /// The local address the TCP connections to the master come from (`None`: the operating
    /// system picks one). Only masters reachable over this address's family (IPv4 or IPv6)
    /// can be used.
    pub bind: Option<IpAddr>,
}

impl WorkerConfig {
    /// A configuration with one thread per available core (at most [`MAX_SLOTS`]), the
    /// default timeouts (reconnect 250 ms doubling up to 30 s, connect 10 s, welcome 10 s,
    /// close 5 s) and no source address of its own.
    pub fn new(servers: Vec<Url>, worker_id: impl Into<String>) -> Self {
        WorkerConfig {
            servers,
            threads: default_threads(),
            worker_id: worker_id.into(),
            reconnect_initial: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            welcome_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            bind: None,
        }
    }

    /// Check everything the master would otherwise refuse, before connecting anywhere.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.servers.is_empty() {
            return Err(WorkerError::Config("no master server URL given".into()));
        }
        if let Some(url) = self
            .servers
            .iter()
            .find(|url| !matches!(url.scheme(), "ws" | "wss"))
        {
            return Err(WorkerError::Config(format!(
                "server URL {url} must start with ws:// or wss://"
            )));
        }
        if !(1..=MAX_SLOTS).contains(&self.threads) {
            return Err(WorkerError::Config(format!(
                "threads must be between 1 and {MAX_SLOTS}, not {}",
                self.threads
            )));
        }
        if !is_valid_worker_id(&self.worker_id) {
            return Err(WorkerError::Config(format!(
                "invalid worker id {:?}",
                self.worker_id
            )));
        }
        Ok(())
    }
}

/// One thread per core the OS lets this process use, within 1 to [`MAX_SLOTS`].
pub fn default_threads() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(MAX_SLOTS))
        .unwrap_or(1)
        .clamp(1, MAX_SLOTS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(url: &str) -> WorkerConfig {
        WorkerConfig::new(vec![Url::parse(url).unwrap()], "native-test")
    }

    #[test]
    fn defaults_are_valid() {
        let config = config("ws://127.0.0.1:8080/ws");
        assert!((1..=MAX_SLOTS).contains(&config.threads));
        config.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(config("http://127.0.0.1/ws").validate().is_err());
        let mut no_servers = config("ws://127.0.0.1/ws");
        no_servers.servers.clear();
        assert!(no_servers.validate().is_err());
        let mut no_threads = config("ws://127.0.0.1/ws");
        no_threads.threads = 0;
        assert!(no_threads.validate().is_err());
        let mut bad_id = config("ws://127.0.0.1/ws");
        bad_id.worker_id = "has space".into();
        assert!(bad_id.validate().is_err());
    }
}
