//! [`WorkerConfig`]: what [`crate::run`] needs to know. Filled from the command line by
//! `main.rs`; tests build it with [`WorkerConfig::new`] and adjust the fields.

use std::net::IpAddr;
use std::time::Duration;

use grid_protocol::{MAX_SLOTS, is_valid_worker_id};
use grid_task_abi::limits::MAX_MAX_MEMORY_MB;
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
    /// The memory budget of module chunks, in MiB (`--max-memory`): the `max_memory_mb` caps
    /// of the module chunks running at once add up to at most this.
    pub max_memory_mb: u64,
    /// A PEM file of certificate authorities to trust for `wss://` masters (and their module
    /// downloads) besides the Mozilla roots: a private CA, or a self-signed certificate
    /// (`--ca-cert`).
    pub ca_cert: Option<std::path::PathBuf>,
    /// How often a connected worker asks its master for the other live masters (about: each
    /// wait is jittered by up to a quarter, so ten thousand workers do not ask at once).
    pub masters_refresh: Duration,
}

impl WorkerConfig {
    /// A configuration with one thread per available core (at most [`MAX_SLOTS`]), the
    /// default memory budget ([`default_max_memory_mb`]), the default timeouts (reconnect
    /// 250 ms doubling up to 30 s, connect 10 s, welcome 10 s, close 5 s), the other masters
    /// asked for every two minutes, and no source address of its own.
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
            max_memory_mb: default_max_memory_mb(),
            ca_cert: None,
            masters_refresh: crate::masters::DEFAULT_REFRESH_INTERVAL,
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
        if self.max_memory_mb == 0 {
            return Err(WorkerError::Config(
                "the memory budget must be at least 1 MiB".into(),
            ));
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

/// The default memory budget: half of the machine's physical memory (`MemTotal` in
/// `/proc/meminfo`), or [`MAX_MAX_MEMORY_MB`] where that cannot be read, so that any one job
/// still fits.
pub fn default_max_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| mem_total_kib(&meminfo))
        .map_or(u64::from(MAX_MAX_MEMORY_MB), |kib| (kib / 1024 / 2).max(1))
}

/// `MemTotal` of a `/proc/meminfo`, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// Parse a `--max-memory` value into MiB: a number of MiB (`4096`), or a number with a unit,
/// `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB` or `T`/`TiB` (powers of 1024, case-insensitive, e.g.
/// `512MiB`, `6G`, `1073741824B`). Byte counts are rounded down to whole MiB; the result must
/// be at least 1 MiB.
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4096, 512MiB or 6G"))?;
    let shift: u32 = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 0,
        "k" | "kib" | "kb" => 10,
        "" | "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, K, M, G or T)"
            ));
        }
    };
    let bytes = u128::from(number) << shift;
    let mib = u64::try_from(bytes >> 20).unwrap_or(u64::MAX);
    if mib == 0 {
        return Err(format!("{text:?} is less than 1 MiB"));
    }
    Ok(mib)
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

    #[test]
    fn memory_sizes_parse() {
        for (text, mib) in [
            ("4096", 4096),
            ("512MiB", 512),
            ("512M", 512),
            ("6G", 6144),
            ("6 GiB", 6144),
            ("1t", 1 << 20),
            ("1073741824B", 1024),
            ("1048577b", 1),
            ("2048K", 2),
        ] {
            assert_eq!(parse_memory_size(text), Ok(mib), "{text}");
        }
        for bad in ["", "G", "-1", "1.5G", "12 parsecs", "1048575B", "0"] {
            assert!(parse_memory_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            mem_total_kib("MemTotal:       24683544 kB\nMemFree: 1 kB\n"),
            Some(24_683_544)
        );
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        assert!(default_max_memory_mb() >= 1);
    }
}
