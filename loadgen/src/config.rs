//! [`LoadConfig`]: everything [`crate::run`] needs, and [`Args`], the command line that fills it.
//!
//! Tests build a [`LoadConfig`] directly with [`LoadConfig::new`]; the binary parses [`Args`]
//! and calls [`Args::into_config`], which checks the flags that depend on each other.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use grid_protocol::MAX_SLOTS;
use url::Url;

use crate::LoadError;
use crate::sabotage::Sabotage;

/// When a run ends (besides the caller's shutdown future, which always ends it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopWhen {
    /// Only when the shutdown future completes.
    Shutdown,
    /// After this long.
    After(Duration),
    /// Once work has been received and then nothing was held or assigned on any connection
    /// for this long (the jobs ran dry).
    Idle(Duration),
}

/// Settings of one load-generator run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The master's WebSocket endpoint (`ws://host:port/ws`; no TLS).
    pub server: Url,
    /// Simulated workers: one WebSocket session and one identity each.
    pub workers: u32,
    /// Slots each simulated worker announces (chunks it computes at once).
    pub slots: u32,
    /// Simulated compute time per chunk, on top of running the kernel for real (a timer, no
    /// thread is blocked). Zero measures pure protocol and scheduling overhead.
    pub compute: Duration,
    /// Each chunk takes up to this much longer than `compute`, uniformly at random (seeded):
    /// workers and chunks are never all equally fast, and the tail of a job shows it.
    pub compute_jitter: Duration,
    /// When to stop.
    pub stop: StopWhen,
    /// Seeds identities (`loadgen-<seed>-<i>`), the choice of saboteurs and their lies.
    pub seed: u64,
    /// How many of the workers lie.
    pub saboteurs: u32,
    /// How they lie.
    pub sabotage: Sabotage,
    /// Most WebSocket handshakes in flight at once (a ramp, so 10,000 workers do not overflow
    /// the master's listen backlog).
    pub connect_concurrency: usize,
    /// Print a progress line on stderr this often (`None`: never).
    pub progress: Option<Duration>,
}

impl LoadConfig {
    /// `workers` honest workers with one slot each, no simulated compute time, seed 0, until
    /// the shutdown future completes.
    pub fn new(server: Url, workers: u32) -> Self {
        LoadConfig {
            server,
            workers,
            slots: 1,
            compute: Duration::ZERO,
            compute_jitter: Duration::ZERO,
            stop: StopWhen::Shutdown,
            seed: 0,
            saboteurs: 0,
            sabotage: Sabotage::Colluding,
            connect_concurrency: 256,
            progress: None,
        }
    }

    /// Check what the master would refuse or what cannot work, before connecting anywhere.
    pub fn validate(&self) -> Result<(), LoadError> {
        if self.server.scheme() != "ws" {
            return Err(LoadError::Config(format!(
                "the server URL must be ws:// (load tests run on loopback, without TLS), not {}",
                self.server
            )));
        }
        if self.workers == 0 {
            return Err(LoadError::Config("--workers must be at least 1".into()));
        }
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(LoadError::Config(format!(
                "--slots must be between 1 and {MAX_SLOTS}"
            )));
        }
        if self.saboteurs > self.workers {
            return Err(LoadError::Config(format!(
                "--saboteurs ({}) cannot exceed --workers ({})",
                self.saboteurs, self.workers
            )));
        }
        if let Sabotage::Intermittent { probability } = self.sabotage
            && !(0.0..=1.0).contains(&probability)
        {
            return Err(LoadError::Config(
                "--lie-probability must be between 0 and 1".into(),
            ));
        }
        if self.connect_concurrency == 0 {
            return Err(LoadError::Config(
                "--connect-concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Accept what people paste: `http://host:port` (the master's page) or `ws://host:port/ws`.
/// `http` becomes `ws`, and an empty path becomes `/ws`. No TLS: load tests run on loopback.
pub fn worker_endpoint(url: &str) -> Result<Url, LoadError> {
    let mut parsed =
        Url::parse(url).map_err(|error| LoadError::Config(format!("--server {url}: {error}")))?;
    let scheme = match parsed.scheme() {
        "http" | "ws" => "ws",
        other => {
            return Err(LoadError::Config(format!(
                "--server: unsupported scheme {other}: (use ws:// or http://)"
            )));
        }
    };
    parsed
        .set_scheme(scheme)
        .map_err(|()| LoadError::Config(format!("--server {url}: cannot use {scheme}://")))?;
    if parsed.path().is_empty() || parsed.path() == "/" {
        parsed.set_path("/ws");
    }
    Ok(parsed)
}

/// How saboteurs lie (the `--sabotage` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SabotageMode {
    /// A different random wrong output for every chunk: liars never agree with each other.
    Random,
    /// Every saboteur returns the same wrong output for a given input (derived from a hash
    /// of the seed and the input): liars outvote honest workers when they meet on a chunk.
    Colluding,
    /// Honest for its first `--sleeper-after` results (to earn trust), then colluding lies.
    Sleeper,
    /// Colluding lies with probability `--lie-probability`, honest otherwise.
    Intermittent,
}

/// `grid-loadgen`: simulate many grid workers against one master.
#[derive(Debug, Parser)]
#[command(name = "grid-loadgen", version, about)]
pub struct Args {
    /// The master: `ws://HOST:PORT/ws` or `http://HOST:PORT` (no TLS).
    #[arg(long, env = "GRID_SERVER")]
    pub server: String,
    /// Simulated workers, each its own WebSocket session and identity.
    #[arg(long)]
    pub workers: u32,
    /// Slots per worker (chunks computed at once).
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Simulated compute time per chunk in milliseconds (a timer; 0 = pure overhead).
    #[arg(long, default_value_t = 0)]
    pub compute_ms: u64,
    /// Up to this many milliseconds more per chunk, uniformly at random (seeded).
    #[arg(long, default_value_t = 0)]
    pub compute_jitter_ms: u64,
    /// Stop after this many seconds.
    #[arg(long, conflicts_with = "until_idle")]
    pub duration_s: Option<f64>,
    /// Stop once work was received and then no connection held or got any for `--idle-s`.
    #[arg(long)]
    pub until_idle: bool,
    /// The quiet period of `--until-idle`, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub idle_s: f64,
    /// How many of the workers lie.
    #[arg(long, default_value_t = 0)]
    pub saboteurs: u32,
    /// How saboteurs lie.
    #[arg(long, value_enum, default_value_t = SabotageMode::Colluding)]
    pub sabotage: SabotageMode,
    /// Sleeper saboteurs: honest results before the first lie.
    #[arg(long, default_value_t = 20)]
    pub sleeper_after: u64,
    /// Intermittent saboteurs: probability of lying on each chunk.
    #[arg(long, default_value_t = 0.5)]
    pub lie_probability: f64,
    /// Seeds identities, the choice of saboteurs and their lies.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Print a progress line on stderr every this many seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    pub progress_s: f64,
    /// Also write the summary as JSON to this file (`-` for stdout).
    #[arg(long)]
    pub json: Option<String>,
}

impl Args {
    /// The run these flags describe, checked.
    pub fn into_config(&self) -> Result<LoadConfig, LoadError> {
        let seconds = |flag: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .map_err(|_| LoadError::Config(format!("{flag} must be a positive number")))
        };
        let mut config = LoadConfig::new(worker_endpoint(&self.server)?, self.workers);
        config.slots = self.slots;
        config.compute = Duration::from_millis(self.compute_ms);
        config.compute_jitter = Duration::from_millis(self.compute_jitter_ms);
        config.stop = match (self.duration_s, self.until_idle) {
            (Some(duration), _) => StopWhen::After(seconds("--duration-s", duration)?),
            (None, true) => StopWhen::Idle(seconds("--idle-s", self.idle_s)?),
            (None, false) => StopWhen::Shutdown,
        };
        config.seed = self.seed;
        config.saboteurs = self.saboteurs;
        config.sabotage = match self.sabotage {
            SabotageMode::Random => Sabotage::Random,
            SabotageMode::Colluding => Sabotage::Colluding,
            SabotageMode::Sleeper => Sabotage::Sleeper {
                honest_results: self.sleeper_after,
            },
            SabotageMode::Intermittent => Sabotage::Intermittent {
                probability: self.lie_probability,
            },
        };
        config.connect_concurrency = self.connect_concurrency;
        config.progress = if self.progress_s > 0.0 {
            Some(seconds("--progress-s", self.progress_s)?)
        } else {
            None
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_page_and_socket_urls() {
        let cases = [
            ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws"),
            ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/ws"),
            ("ws://127.0.0.1:8080/ws", "ws://127.0.0.1:8080/ws"),
            ("ws://h:1/custom", "ws://h:1/custom"),
        ];
        for (given, expected) in cases {
            let url = worker_endpoint(given).map(|url| url.to_string());
            assert_eq!(url.ok().as_deref(), Some(expected), "{given}");
        }
        assert!(worker_endpoint("ftp://h/").is_err());
        assert!(worker_endpoint("https://h/").is_err());
        assert!(worker_endpoint("not a url").is_err());
    }

    #[test]
    fn flags_that_depend_on_each_other_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["grid-loadgen", "--server", "http://127.0.0.1:1"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .map_err(|error| error.to_string())
                .and_then(|args| args.into_config().map_err(|error| error.to_string()))
        };
        assert!(parse(&["--workers", "3", "--saboteurs", "4"]).is_err());
        assert!(parse(&["--workers", "0"]).is_err());
        assert!(parse(&["--workers", "1", "--slots", "0"]).is_err());
        assert!(parse(&["--workers", "1", "--duration-s", "1", "--until-idle"]).is_err());
        assert!(
            parse(&[
                "--workers",
                "1",
                "--sabotage",
                "intermittent",
                "--lie-probability",
                "2"
            ])
            .is_err()
        );
        let config = parse(&[
            "--workers",
            "10",
            "--saboteurs",
            "2",
            "--sabotage",
            "sleeper",
            "--sleeper-after",
            "5",
            "--until-idle",
            "--slots",
            "4",
            "--compute-ms",
            "15",
            "--compute-jitter-ms",
            "5",
        ]);
        let Ok(config) = config else {
            panic!("valid flags refused: {config:?}");
        };
        assert_eq!(config.sabotage, Sabotage::Sleeper { honest_results: 5 });
        assert_eq!(config.stop, StopWhen::Idle(Duration::from_secs(2)));
        assert_eq!(config.compute, Duration::from_millis(15));
        assert_eq!(config.compute_jitter, Duration::from_millis(5));
        assert_eq!((config.workers, config.slots, config.saboteurs), (10, 4, 2));
    }
}
