//! Configuration from flags and environment variables.

use std::net::SocketAddr;

use clap::Parser;

/// `grid-server` configuration.
#[derive(Clone, Parser)]
#[command(
    name = "grid-server",
    version,
    about = "The volunteer compute grid's master"
)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "GRID_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL URL, e.g. postgres://user@127.0.0.1:5432/grid. When unset the master keeps
    /// everything in the embedded database under --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory of the embedded database (and of the generated admin token) when no
    /// DATABASE_URL is set.
    #[arg(
        long,
        env = "GRID_DATA_DIR",
        default_value = "grid-data",
        global = true
    )]
    pub data_dir: std::path::PathBuf,

    /// What to do instead of running the master.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The admin bearer token, at least 16 characters. When unset a random one is generated,
    /// saved in <data-dir>/admin-token (mode 0600) and kept across restarts; only the file's
    /// path is printed.
    #[arg(long, env = "GRID_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Web origins (scheme://host[:port], comma separated, or `*`) whose pages may open worker
    /// sessions at /ws, besides the master's own; native workers send no Origin and are always
    /// allowed.
    #[arg(long, env = "GRID_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Plain voting: no spot-checks, blacklisting or backtracking (for comparisons).
    #[arg(long, env = "GRID_NO_TRUST")]
    pub no_trust: bool,

    /// How long a graceful shutdown waits for in-flight results, in seconds.
    #[arg(long, env = "GRID_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,

    /// Largest WebAssembly task module accepted at upload, in bytes.
    #[arg(long, env = "GRID_MAX_MODULE_BYTES", default_value_t = grid_task_abi::limits::DEFAULT_MAX_MODULE_BYTES)]
    pub max_module_bytes: usize,

    /// Largest dataset file (Parquet, CSV, NDJSON) of a multipart job submission, in bytes.
    #[arg(long, env = "GRID_MAX_DATASET_BYTES", default_value_t = crate::limits::Limits::default().max_dataset_bytes)]
    pub max_dataset_bytes: usize,

    /// Prefix lengths that make one network, IPv4 then IPv6 (`24,48`), or `off`: the results
    /// of one quorum come from distinct networks, and per-network caps apply.
    #[arg(long, env = "GRID_DISTINCT_NETWORKS", default_value = "24,48")]
    pub distinct_networks: String,

    /// The host's own networks (CIDR list): their workers are exempt from the distinct-network
    /// rule and the per-network caps, each counting as a network of its own. Empty or `none`: none.
    #[arg(long, env = "GRID_TRUSTED_NETWORKS", default_value = grid_server_network_default())]
    pub trusted_networks: String,

    /// Reverse proxies (CIDR list) whose `X-Forwarded-For` names the client. Empty or `none`:
    /// none.
    #[arg(long, env = "GRID_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Seconds an HTTP client may take to send a request's headers (from the connection's
    /// start or its previous response, so idle keep-alive connections close after this long).
    #[arg(long, env = "GRID_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a REST request may take before it answers 503 `timeout` (streams, uploads and
    /// /ws are exempt).
    #[arg(long, env = "GRID_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Open TCP connections at most (WebSocket sessions included); more are closed at once.
    /// Lowered to fit the open-file limit.
    #[arg(long, env = "GRID_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Open TCP connections at most from one address outside the trusted networks.
    #[arg(long, env = "GRID_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: usize,

    /// Worker sessions at most; more are answered 429 `too_many_sessions`.
    #[arg(long, env = "GRID_MAX_SESSIONS", default_value_t = 20_000)]
    pub max_sessions: usize,

    /// Worker sessions at most from one network (see --distinct-networks) outside the trusted
    /// networks; more are answered 429 `too_many_sessions`.
    #[arg(long, env = "GRID_MAX_SESSIONS_PER_NETWORK", default_value_t = 32)]
    pub max_sessions_per_network: usize,

    /// Results downloads (`GET /api/v1/jobs/{id}/results` and the job image) streaming at
    /// once; more are answered 503 `too_many_downloads` with `Retry-After`.
    #[arg(long, env = "GRID_MAX_DOWNLOADS", default_value_t = 8)]
    pub max_downloads: usize,

    /// Server-sent event streams (job events and the dashboard's) open at once; more are
    /// answered 503 `too_many_event_streams` with `Retry-After`.
    #[arg(long, env = "GRID_MAX_EVENT_STREAMS", default_value_t = 256)]
    pub max_event_streams: usize,

    /// Server-sent event streams open at once from one network outside the trusted networks;
    /// more are answered 429 `too_many_event_streams`.
    #[arg(long, env = "GRID_MAX_EVENT_STREAMS_PER_NETWORK", default_value_t = 16)]
    pub max_event_streams_per_network: usize,

    /// Proof of work asked of every new worker session outside the trusted networks, in
    /// leading zero bits of a SHA-256 (0 to 32; 0: none). Each session then costs its worker
    /// about 2^bits hashes: 20 bits is about a second of one core natively.
    #[arg(long, env = "GRID_HELLO_WORK_BITS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(grid_protocol::work::MAX_BITS)))]
    pub hello_work_bits: u32,

    // Transport and origin (issue 19): TLS served directly, the master's public origins.
    /// PEM certificate chain (the server's certificate first): serve HTTPS and WSS on
    /// --listen instead of plain HTTP and WS. Needs --tls-key.
    #[arg(long, env = "GRID_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "GRID_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// The master's own public origins (scheme://host[:port], comma separated), e.g.
    /// https://grid.example. When set, only pages of these origins (and of
    /// --allowed-origins) may open worker sessions, whatever the request's Host says, so DNS
    /// rebinding cannot pass the check. Unset: a page whose origin matches the request's Host.
    #[arg(
        long,
        env = "GRID_PUBLIC_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub public_origin: Vec<String>,

    /// The WebSocket URL (ws://host:port/ws or wss://...) at which the workers of other masters
    /// sharing this database reach this one: named in every welcome and at GET /api/v1/masters
    /// so workers fail over between masters. Unset: from the first --public-origin, else from
    /// the listening address unless it is a wildcard (then this master is not named).
    #[arg(long, env = "GRID_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,

    // Tenant quotas and retention (issue 19 §5; README "Tenant quotas and retention").
    /// Open chunks (not yet decided, over its queued and running jobs) one submitter token may
    /// hold, the submitted job's included; more answer 429 `quota_exceeded`. 0: no limit. The
    /// admin token has no quotas.
    #[arg(long, env = "GRID_MAX_OPEN_CHUNKS", default_value_t = crate::quota::DEFAULT_MAX_OPEN_CHUNKS)]
    pub max_open_chunks: u64,

    /// Bytes of uploaded modules one submitter token may keep stored (DELETE
    /// /api/v1/modules/{id} frees them). 0: no limit.
    #[arg(long, env = "GRID_MAX_MODULE_BYTES_PER_TOKEN", default_value_t = crate::quota::DEFAULT_MAX_MODULE_BYTES)]
    pub max_module_bytes_per_token: u64,

    /// Job submissions and module uploads one submitter token may send per minute (a burst of
    /// this many, then one every 60/N s). 0: no limit.
    #[arg(long, env = "GRID_MAX_SUBMISSIONS_PER_MINUTE", default_value_t = crate::quota::DEFAULT_MAX_SUBMISSIONS_PER_MINUTE)]
    pub max_submissions_per_minute: u32,

    /// Delete the replicas and results of jobs finished more than this many days ago (the job
    /// row and its counters stay; its results answer 410). Unset: keep everything.
    #[arg(long, env = "GRID_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: Option<u32>,

    // Delta Lake sinks (README "Results in your lakehouse").
    /// Where jobs may name Delta tables for their results (`"sink": {"delta": URI}`): an
    /// absolute directory, `file:///dir` or `s3://bucket[/prefix]`; repeatable or
    /// comma-separated. A job's table must lie under one of them. None: no sinks.
    #[arg(
        long,
        env = "GRID_SINK_ROOTS",
        value_delimiter = ',',
        value_name = "URI"
    )]
    pub sink_root: Vec<String>,

    /// The S3 endpoint for `s3://` sinks, for storage other than AWS
    /// (`http://127.0.0.1:9000`). Credentials come from the master's environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), never from a job.
    #[arg(long, env = "GRID_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// The S3 region (default: `AWS_REGION` of the environment, else us-east-1).
    #[arg(long, env = "GRID_S3_REGION")]
    pub s3_region: Option<String>,

    /// Allow plain HTTP to the S3 endpoint (local object stores).
    #[arg(long, env = "GRID_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,

    /// The S3 access key id (or AWS_ACCESS_KEY_ID, or the environment's other standard
    /// sources of credentials).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,

    /// The S3 secret access key (or AWS_SECRET_ACCESS_KEY). Prefer the environment: a flag is
    /// visible to every user of the machine.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Log as JSON lines instead of text (or set GRID_LOG_FORMAT=json).
    #[arg(long, env = "GRID_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl std::fmt::Debug for Config {
    // Secrets (the database password, the admin token) never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("data_dir", &self.data_dir)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("allowed_origins", &self.allowed_origins)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("no_trust", &self.no_trust)
            .field("max_module_bytes", &self.max_module_bytes)
            .field("max_dataset_bytes", &self.max_dataset_bytes)
            .field("distinct_networks", &self.distinct_networks)
            .field("trusted_networks", &self.trusted_networks)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("header_timeout_secs", &self.header_timeout_secs)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_sessions", &self.max_sessions)
            .field("max_sessions_per_network", &self.max_sessions_per_network)
            .field("max_downloads", &self.max_downloads)
            .field("max_event_streams", &self.max_event_streams)
            .field(
                "max_event_streams_per_network",
                &self.max_event_streams_per_network,
            )
            .field("hello_work_bits", &self.hello_work_bits)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("public_origin", &self.public_origin)
            .field("advertise_url", &self.advertise_url)
            .field("max_open_chunks", &self.max_open_chunks)
            .field(
                "max_module_bytes_per_token",
                &self.max_module_bytes_per_token,
            )
            .field(
                "max_submissions_per_minute",
                &self.max_submissions_per_minute,
            )
            .field("retention_days", &self.retention_days)
            .field("sink_root", &self.sink_root)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_allow_http", &self.s3_allow_http)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("log_format", &self.log_format)
            .field("command", &self.command)
            .finish()
    }
}

/// `grid-server`'s subcommands (none: run the master).
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Write an online, consistent copy of the embedded database (the one in --data-dir) to a
    /// new file, while the master keeps running. Restore: stop the master, put the file in
    /// place of <data-dir>/grid.db (removing grid.db-wal and grid.db-shm), start it.
    Backup {
        /// The file to write (must not exist).
        #[arg(long)]
        to: std::path::PathBuf,
    },
}

const fn grid_server_network_default() -> &'static str {
    crate::network::DEFAULT_TRUSTED
}

impl Config {
    /// The limits these settings describe (the rest at their defaults).
    pub fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits {
            max_module_bytes: self.max_module_bytes,
            max_dataset_bytes: self.max_dataset_bytes,
            header_read_timeout: std::time::Duration::from_secs(self.header_timeout_secs.max(1)),
            request_timeout: std::time::Duration::from_secs(self.request_timeout_secs.max(1)),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_ws_sessions: self.max_sessions,
            max_ws_sessions_per_network: self.max_sessions_per_network,
            max_downloads: self.max_downloads,
            max_event_streams: self.max_event_streams,
            max_event_streams_per_network: self.max_event_streams_per_network,
            hello_work_bits: self.hello_work_bits,
            max_open_chunks: self.max_open_chunks,
            max_module_bytes_per_token: self.max_module_bytes_per_token,
            max_submissions_per_minute: self.max_submissions_per_minute,
            ..Default::default()
        }
    }

    /// The Delta sinks these settings admit ([`crate::lakehouse`]).
    pub fn sinks(&self) -> Result<crate::lakehouse::SinkPolicy, String> {
        crate::lakehouse::SinkPolicy::new(
            &self.sink_root,
            crate::lakehouse::S3Settings {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                allow_http: self.s3_allow_http,
                access_key_id: self.s3_access_key_id.clone(),
                secret_access_key: self.s3_secret_access_key.clone(),
            },
        )
    }

    /// The retention these settings describe (`None`: keep everything).
    pub fn retention(&self) -> Option<crate::retention::RetentionPolicy> {
        self.retention_days
            .map(crate::retention::RetentionPolicy::days)
    }

    /// The network policy these settings describe.
    pub fn network_policy(&self) -> Result<crate::network::NetworkPolicy, String> {
        crate::network::NetworkPolicy::parse(
            &self.distinct_networks,
            &self.trusted_networks,
            &self.trusted_proxies,
        )
    }
}

/// The URL with any password replaced.
pub fn redact_url(url: &str) -> String {
    let url = &redact_password_parameter(url);
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// `url` with the value of a `password=` query parameter (libpq's other way to give one)
/// replaced by `***`.
fn redact_password_parameter(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_of_multi_host_urls_and_parameters_are_redacted() {
        assert_eq!(
            redact_url(
                "postgres://grid:s3cret@h1:5433,h2:5434/grid?target_session_attrs=read-write"
            ),
            "postgres://grid:***@h1:5433,h2:5434/grid?target_session_attrs=read-write"
        );
        assert_eq!(
            redact_url("postgres://grid@h1/grid?sslmode=disable&password=s3cret"),
            "postgres://grid@h1/grid?sslmode=disable&password=***"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://grid:s3cret@db:5432/grid"),
            "postgres://grid:***@db:5432/grid"
        );
        assert_eq!(redact_url("postgres://db/grid"), "postgres://db/grid");
    }
}
