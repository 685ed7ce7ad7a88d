//! [`LoadConfig`]: everything [`crate::run`] needs, and [`Args`], the command line that fills it.
//!
//! Tests build a [`LoadConfig`] directly with [`LoadConfig::new`]; the binary parses [`Args`]
//! and calls [`Args::into_config`], which checks the flags that depend on each other.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use grid_protocol::MAX_SLOTS;
use url::{Host, Url};

use crate::LoadError;
use crate::adversary::Attack;
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
    /// The master's WebSocket endpoint (`ws://host:port/ws`, or `wss://` for a master serving
    /// TLS).
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
    /// How many of the workers lie (or attack: the attacking workers of the report).
    pub saboteurs: u32,
    /// How they lie.
    pub sabotage: Sabotage,
    /// What they do besides lying (`None`: they only lie, as `sabotage` says).
    pub attack: Option<Attack>,
    /// Slots each saboteur announces (`None`: `slots`, or [`MAX_SLOTS`] for [`Attack::Hoard`]).
    pub attacker_slots: Option<u32>,
    /// Local addresses the honest workers connect from, round robin: the i-th honest worker
    /// uses address i mod n (empty: the operating system picks).
    pub bind: Vec<IpAddr>,
    /// The same for the saboteurs, counted among themselves (empty: `bind`).
    pub attacker_bind: Vec<IpAddr>,
    /// Most WebSocket handshakes in flight at once (a ramp, so 10,000 workers do not overflow
    /// the master's listen backlog).
    pub connect_concurrency: usize,
    /// Print a progress line on stderr this often (`None`: never).
    pub progress: Option<Duration>,
    /// A PEM file of certificate authorities to trust for a `wss://` master besides the
    /// Mozilla roots (`--ca-cert`).
    pub ca_cert: Option<std::path::PathBuf>,
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
            attack: None,
            attacker_slots: None,
            bind: Vec::new(),
            attacker_bind: Vec::new(),
            connect_concurrency: 256,
            progress: None,
            ca_cert: None,
        }
    }

    /// Slots each saboteur announces.
    pub fn saboteur_slots(&self) -> u32 {
        match (self.attacker_slots, self.attack) {
            (Some(slots), _) => slots,
            (None, Some(Attack::Hoard)) => MAX_SLOTS,
            (None, _) => self.slots,
        }
    }

    /// The addresses saboteurs connect from.
    pub fn saboteur_bind(&self) -> &[IpAddr] {
        if self.attacker_bind.is_empty() {
            &self.bind
        } else {
            &self.attacker_bind
        }
    }

    /// Check what the master would refuse or what cannot work, before connecting anywhere.
    pub fn validate(&self) -> Result<(), LoadError> {
        if !matches!(self.server.scheme(), "ws" | "wss") {
            return Err(LoadError::Config(format!(
                "the server URL must be ws:// or wss://, not {}",
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
        if let Some(attack) = self.attack {
            if self.saboteurs == 0 {
                return Err(LoadError::Config(format!(
                    "--attack {} needs --saboteurs (how many workers attack)",
                    attack.name()
                )));
            }
            if attack == (Attack::Rotate { after: 0 }) {
                return Err(LoadError::Config(
                    "--rotate-after must be at least 1".into(),
                ));
            }
        }
        if !(1..=MAX_SLOTS).contains(&self.saboteur_slots()) {
            return Err(LoadError::Config(format!(
                "--attack-slots must be between 1 and {MAX_SLOTS} (the master refuses more)"
            )));
        }
        // Binding to the other family than the master's address cannot connect.
        let master_ip = match self.server.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(master_ip) = master_ip
            && let Some(local) = self
                .bind
                .iter()
                .chain(&self.attacker_bind)
                .find(|local| local.is_ipv4() != master_ip.is_ipv4())
        {
            return Err(LoadError::Config(format!(
                "cannot connect from {local} to {master_ip}: not the same address family"
            )));
        }
        if self.connect_concurrency == 0 {
            return Err(LoadError::Config(
                "--connect-concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Accept what people paste: `http://host:port` (the master's page) or `ws://host:port/ws`,
/// and their TLS forms. `http` becomes `ws`, `https` becomes `wss`, and an empty path becomes
/// `/ws`.
pub fn worker_endpoint(url: &str) -> Result<Url, LoadError> {
    let mut parsed =
        Url::parse(url).map_err(|error| LoadError::Config(format!("--server {url}: {error}")))?;
    let scheme = match parsed.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(LoadError::Config(format!(
                "--server: unsupported scheme {other}: (use ws://, wss://, http:// or https://)"
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
    /// The one output `{"forged":true}` for every chunk, from every saboteur.
    Forged,
}

/// What saboteurs do besides lying (the `--attack` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttackMode {
    /// Answer every chunk with `{"forged":true}`, and connect first, one after the other,
    /// before any honest worker.
    Sybil,
    /// Lie (`--sabotage`) under a fresh random identity per connection, reconnecting after
    /// every `--rotate-after` results.
    Rotate,
    /// Honest for `--sleeper-after` results, then the colluding lie (as `--sabotage sleeper`).
    Sleeper,
    /// Hand every lease straight back with `release`; never compute.
    Release,
    /// Hold every lease, disconnect `--drop-hold-ms` after the first assignment, reconnect
    /// under the same identity, and again; never compute.
    Drop,
    /// Announce `--attack-slots` slots and sit on every lease without answering.
    Slots,
}

/// `grid-loadgen`: simulate many grid workers against one master.
#[derive(Debug, Parser)]
#[command(name = "grid-loadgen", version, about)]
pub struct Args {
    /// The master: `ws://HOST:PORT/ws` or `http://HOST:PORT` (`wss://`, `https://` for a
    /// master serving TLS).
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
    /// How many of the workers lie (and attack, with --attack).
    #[arg(long, default_value_t = 0)]
    pub saboteurs: u32,
    /// How saboteurs lie [default: colluding].
    #[arg(long, value_enum)]
    pub sabotage: Option<SabotageMode>,
    /// What saboteurs do besides lying (see the README's "Simulated workers and adversaries").
    #[arg(long, value_enum)]
    pub attack: Option<AttackMode>,
    /// Rotating attackers: results per connection (and identity).
    #[arg(long, default_value_t = 4)]
    pub rotate_after: u64,
    /// Dropping attackers: how long each connection holds its leases, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub drop_hold_ms: u64,
    /// Slots each saboteur announces [default: --slots; 256, the protocol's most, with
    /// --attack slots].
    #[arg(long)]
    pub attack_slots: Option<u32>,
    /// Local addresses the honest workers connect from, comma-separated, round robin (honest
    /// worker i from address i mod n) [default: the operating system's choice].
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub bind: Vec<IpAddr>,
    /// Local addresses the saboteurs connect from, the same way [default: --bind].
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub attacker_bind: Vec<IpAddr>,
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
    /// PEM file of certificate authorities to trust for a wss:// master besides the Mozilla
    /// roots (a private CA, or the master's self-signed certificate).
    #[arg(long, value_name = "PEM", env = "GRID_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
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
        let sleeper = Sabotage::Sleeper {
            honest_results: self.sleeper_after,
        };
        config.sabotage = match self.sabotage.unwrap_or(SabotageMode::Colluding) {
            SabotageMode::Random => Sabotage::Random,
            SabotageMode::Colluding => Sabotage::Colluding,
            SabotageMode::Sleeper => sleeper,
            SabotageMode::Intermittent => Sabotage::Intermittent {
                probability: self.lie_probability,
            },
            SabotageMode::Forged => Sabotage::Forged,
        };
        config.attack = match self.attack {
            None => None,
            Some(AttackMode::Sybil) => Some(Attack::Sybil),
            Some(AttackMode::Rotate) => Some(Attack::Rotate {
                after: self.rotate_after,
            }),
            Some(AttackMode::Sleeper) => {
                config.sabotage = sleeper;
                None
            }
            Some(AttackMode::Release) => Some(Attack::Release),
            Some(AttackMode::Drop) => Some(Attack::Drop {
                hold: Duration::from_millis(self.drop_hold_ms),
            }),
            Some(AttackMode::Slots) => Some(Attack::Hoard),
        };
        // The attack decides the lie, or there is none: a --sabotage would be ignored.
        let own_lie = match self.attack {
            None | Some(AttackMode::Rotate) => false,
            Some(AttackMode::Sleeper) => self.sabotage != Some(SabotageMode::Sleeper),
            Some(_) => true,
        };
        if let (Some(attack), Some(sabotage), true) = (self.attack, self.sabotage, own_lie) {
            return Err(LoadError::Config(format!(
                "--attack {} cannot be combined with --sabotage {}",
                flag_value(attack),
                flag_value(sabotage),
            )));
        }
        if self.attack.is_some() && self.saboteurs == 0 {
            return Err(LoadError::Config(
                "--attack needs --saboteurs (how many workers attack)".into(),
            ));
        }
        config.attacker_slots = self.attack_slots;
        config.bind.clone_from(&self.bind);
        config.attacker_bind.clone_from(&self.attacker_bind);
        config.connect_concurrency = self.connect_concurrency;
        config.ca_cert.clone_from(&self.ca_cert);
        config.progress = if self.progress_s > 0.0 {
            Some(seconds("--progress-s", self.progress_s)?)
        } else {
            None
        };
        config.validate()?;
        Ok(config)
    }
}

/// How `value` is spelled on the command line.
fn flag_value(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|value| value.get_name().to_owned())
        .unwrap_or_default()
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
            ("https://grid.example", "wss://grid.example/ws"),
            ("wss://grid.example:8443/ws", "wss://grid.example:8443/ws"),
        ];
        for (given, expected) in cases {
            let url = worker_endpoint(given).map(|url| url.to_string());
            assert_eq!(url.ok().as_deref(), Some(expected), "{given}");
        }
        assert!(worker_endpoint("ftp://h/").is_err());
        assert!(worker_endpoint("not a url").is_err());
    }

    /// The run `grid-loadgen --server http://127.0.0.1:1 EXTRA...` describes, or why not.
    fn parse(extra: &[&str]) -> Result<LoadConfig, String> {
        let mut argv = vec!["grid-loadgen", "--server", "http://127.0.0.1:1"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|error| error.to_string())
            .and_then(|args| args.into_config().map_err(|error| error.to_string()))
    }

    #[test]
    fn flags_that_depend_on_each_other_are_checked() {
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
        assert_eq!(config.attack, None);
        assert!(config.bind.is_empty() && config.saboteur_bind().is_empty());
    }

    #[test]
    fn attack_flags() {
        let parse = |extra: &[&str]| parse(&[&["--workers", "4"], extra].concat());
        // An attack needs attackers; attacks that pick the lie (or tell none) take no
        // --sabotage; rotating attackers lie as --sabotage says.
        assert!(parse(&["--attack", "release"]).is_err());
        assert!(parse(&["--attack", "sleeper"]).is_err());
        for attack in ["sybil", "release", "drop", "slots", "sleeper"] {
            let refused = parse(&[
                "--saboteurs",
                "1",
                "--attack",
                attack,
                "--sabotage",
                "random",
            ]);
            assert!(refused.is_err(), "{attack}: {refused:?}");
        }
        let Ok(rotate) = parse(&[
            "--saboteurs",
            "2",
            "--attack",
            "rotate",
            "--sabotage",
            "random",
        ]) else {
            panic!("rotate refused");
        };
        assert_eq!(rotate.attack, Some(Attack::Rotate { after: 4 }));
        assert_eq!(rotate.sabotage, Sabotage::Random);
        assert!(
            parse(&[
                "--saboteurs",
                "1",
                "--attack",
                "rotate",
                "--rotate-after",
                "0"
            ])
            .is_err()
        );

        let Ok(sybil) = parse(&["--saboteurs", "2", "--attack", "sybil"]) else {
            panic!("sybil refused");
        };
        assert_eq!(sybil.attack, Some(Attack::Sybil));
        assert_eq!(sybil.saboteur_slots(), 1);
        let Ok(sleeper) = parse(&[
            "--saboteurs",
            "1",
            "--attack",
            "sleeper",
            "--sleeper-after",
            "3",
        ]) else {
            panic!("sleeper refused");
        };
        assert_eq!(sleeper.attack, None);
        assert_eq!(sleeper.sabotage, Sabotage::Sleeper { honest_results: 3 });
        let Ok(dropping) = parse(&[
            "--saboteurs",
            "1",
            "--attack",
            "drop",
            "--drop-hold-ms",
            "50",
        ]) else {
            panic!("drop refused");
        };
        assert_eq!(
            dropping.attack,
            Some(Attack::Drop {
                hold: Duration::from_millis(50)
            })
        );

        let Ok(hoard) = parse(&["--saboteurs", "1", "--attack", "slots"]) else {
            panic!("slots refused");
        };
        assert_eq!(
            (hoard.attack, hoard.saboteur_slots()),
            (Some(Attack::Hoard), MAX_SLOTS)
        );
        let Ok(few) = parse(&[
            "--saboteurs",
            "1",
            "--attack",
            "slots",
            "--attack-slots",
            "9",
        ]) else {
            panic!("--attack-slots refused");
        };
        assert_eq!((few.slots, few.saboteur_slots()), (1, 9));
        let too_many = (MAX_SLOTS + 1).to_string();
        assert!(
            parse(&[
                "--saboteurs",
                "1",
                "--attack",
                "slots",
                "--attack-slots",
                &too_many
            ])
            .is_err()
        );
    }

    #[test]
    fn source_address_flags() {
        let parse = |extra: &[&str]| parse(&[&["--workers", "4"], extra].concat());
        let ip = |text: &str| text.parse::<IpAddr>().ok();
        let Ok(config) = parse(&["--bind", "127.0.1.1,127.0.2.1"]) else {
            panic!("--bind refused");
        };
        let expected: Vec<IpAddr> = [ip("127.0.1.1"), ip("127.0.2.1")]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(config.bind, expected);
        assert_eq!(config.saboteur_bind(), expected.as_slice());
        let Ok(config) = parse(&[
            "--bind",
            "127.0.1.1",
            "--attacker-bind",
            "127.0.9.1,127.0.10.1",
        ]) else {
            panic!("--attacker-bind refused");
        };
        let attackers: Vec<IpAddr> = [ip("127.0.9.1"), ip("127.0.10.1")]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(config.saboteur_bind(), attackers.as_slice());
        assert!(parse(&["--bind", "not-an-address"]).is_err());
        // An IPv6 source cannot reach an IPv4 master.
        assert!(parse(&["--bind", "::1"]).is_err());
        assert!(parse(&["--attacker-bind", "::1"]).is_err());
    }
}
