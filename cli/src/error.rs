//! [`Error`]: everything that can go wrong in a `grid` command, and the exit code each failure
//! maps to ([`Error::exit_code`]).
//!
//! Exit codes: `0` success; `1` the master refused the request, could not be reached, or a
//! local file could not be read or written; `2` the command line or its input files are wrong
//! (nothing was sent); `3` the job ended `failed` or `cancelled` (`grid status`).

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The master answered with the API's error body `{"error": {"code", "message"}}`.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status code.
        status: u16,
        /// The API's stable error code, e.g. `conflict`.
        code: String,
        /// The master's explanation, for a human.
        message: String,
    },

    /// A non-success answer without the API's error body (a proxy, or not a grid master).
    #[error("HTTP {status} from {url}")]
    Http {
        /// The request URL.
        url: String,
        /// The status, with its reason phrase when known.
        status: reqwest::StatusCode,
    },

    /// The request never got an answer: refused connection, DNS, TLS, timeout, reset.
    #[error("cannot reach {url}: {detail}")]
    Connect {
        /// The request URL.
        url: String,
        /// The cause, innermost last.
        detail: String,
    },

    /// The master answered success with something this CLI does not understand, or the body
    /// broke off midway.
    #[error("unexpected answer from {url}: {detail}")]
    Response {
        /// The request URL.
        url: String,
        /// What was wrong with it.
        detail: String,
    },

    /// No token given for a command that calls the API.
    #[error("no API token: pass --token or set GRID_TOKEN")]
    MissingToken,

    /// A command-line value is wrong (a bad `--url`, a `--range` that cannot be split).
    #[error("{0}")]
    Usage(String),

    /// An inputs file (or standard input) is not a JSON array or NDJSON of inputs.
    #[error("{source_name}: {message}")]
    Inputs {
        /// The file name, or `<stdin>`.
        source_name: String,
        /// What is wrong and where (line, column).
        message: String,
    },

    /// Reading or writing a local file failed.
    #[error("{}: {source}", path.display())]
    File {
        /// The file (`-` for standard input or output).
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// `grid run-local`: the module breaks the task ABI (the master would refuse it too), or
    /// the machine's WebAssembly engine cannot start.
    #[error("{0}")]
    Module(String),

    /// `grid run-local`: some inputs ended in an error outcome (printed with the others).
    #[error("{failed} of {total} inputs failed")]
    ChunksFailed {
        /// Inputs whose outcome is an error.
        failed: usize,
        /// Inputs run.
        total: usize,
    },

    /// `grid status`: the job finished without success.
    #[error("job {id} ended {state}")]
    JobEnded {
        /// Job id.
        id: i64,
        /// Failed or cancelled.
        state: grid_protocol::states::JobState,
    },
}

impl Error {
    /// The process exit code for this failure (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::MissingToken | Error::Inputs { .. } | Error::Module(_) => 2,
            Error::JobEnded { .. } | Error::ChunksFailed { .. } => 3,
            Error::Api { .. }
            | Error::Http { .. }
            | Error::Connect { .. }
            | Error::Response { .. }
            | Error::File { .. } => 1,
        }
    }

    /// A local I/O failure on `path`.
    pub(crate) fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }
}
