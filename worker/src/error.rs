//! The worker's errors.
//!
//! - [`WorkerError`]: everything that ends a session or the worker. Most variants end one
//!   session and the worker reconnects; [`WorkerError::is_fatal`] says which ones stop
//!   [`crate::run`] instead (bad configuration, an unusable identity, a master that speaks
//!   another protocol version).
//! - [`ModuleError`]: a task module that could not be made ready to run. It ends nothing: the
//!   session hands the assignment back to the master.

use std::io;
use std::path::PathBuf;

use tokio_tungstenite::tungstenite;

use crate::sandbox::CompileError;

/// Why the worker, or one of its sessions, stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The [`crate::WorkerConfig`] cannot work (no server, bad URL scheme, slots out of range).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// No directory to keep identities in: none of the environment variables is set.
    #[error(
        "no directory for the worker identity: set GRID_WORKER_HOME, XDG_DATA_HOME or HOME, \
         or pass --identity-file"
    )]
    NoIdentityDir,

    /// Reading, creating or locking an identity file failed.
    #[error("identity file {}: {source}", path.display())]
    Identity {
        /// The identity file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// An explicitly named identity file is locked by another running worker.
    #[error("identity file {} is in use by another grid-worker", .0.display())]
    IdentityInUse(PathBuf),

    /// An identity file holds something that is not a valid worker id; left untouched.
    #[error("identity file {} does not hold a valid worker id", .0.display())]
    InvalidIdentity(PathBuf),

    /// Connecting or talking to the master failed at the WebSocket level.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),

    /// The master did not answer in time (connect, welcome, or silence during a session).
    #[error("timed out: {0}")]
    Timeout(&'static str),

    /// The master speaks a protocol version this worker does not. Retrying cannot help.
    #[error("master refused protocol version {ours}: {message}")]
    ProtocolMismatch {
        /// [`grid_protocol::PROTOCOL_VERSION`].
        ours: u32,
        /// What the master said.
        message: String,
    },

    /// The master answered the hello with an error (other than a version mismatch).
    #[error("master refused the session: {code}: {message}")]
    Refused {
        /// The master's error code.
        code: String,
        /// The master's explanation.
        message: String,
    },

    /// The master sent an error during a session; it closes the connection after it.
    #[error("master ended the session: {code}: {message}")]
    MasterError {
        /// The master's error code.
        code: String,
        /// The master's explanation.
        message: String,
    },

    /// The master sent something that is not a protocol message, or not at this point.
    #[error("malformed message from the master: {0}")]
    Malformed(String),

    /// The master closed the connection.
    #[error("connection closed by the master")]
    Closed,
}

impl WorkerError {
    /// True if reconnecting cannot help, so [`crate::run`] returns this error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WorkerError::Config(_)
                | WorkerError::NoIdentityDir
                | WorkerError::Identity { .. }
                | WorkerError::IdentityInUse(_)
                | WorkerError::InvalidIdentity(_)
                | WorkerError::ProtocolMismatch { .. }
        )
    }
}

impl From<tungstenite::Error> for WorkerError {
    fn from(error: tungstenite::Error) -> Self {
        WorkerError::WebSocket(Box::new(error))
    }
}

/// Why a task module could not be fetched and compiled. Not an outcome of the chunk: another
/// worker, or a later try, may well get the module, so the session releases the lease.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The assignment named something that is not a module id (`sha256:` and 64 hex digits).
    #[error("{0:?} is not a module id")]
    BadId(String),
    /// The download failed (connection, TLS, timeout, or the body broke off).
    #[error("downloading the module: {0}")]
    Download(#[from] reqwest::Error),
    /// The master answered with another status than 200.
    #[error("the master answered {0} for the module")]
    Status(reqwest::StatusCode),
    /// The module is larger than a worker downloads.
    #[error("the module is larger than {limit} bytes")]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The bytes do not hash to the id they were fetched by.
    #[error("the module's bytes hash to {actual}, not to the id they were fetched by")]
    HashMismatch {
        /// What the bytes hash to.
        actual: String,
    },
    /// The module breaks the task ABI or wasmtime refused it.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// Compiling took longer than the worker allows; the module is not tried again for a
    /// while (`module_cache::UNCOMPILABLE_FOR`).
    #[error("compiling the module took longer than {} s", .0.as_secs_f64())]
    CompileTimeout(std::time::Duration),
    /// The module's compilation timed out recently: not tried again yet.
    #[error("the module did not compile in time recently; not trying again yet")]
    Uncompilable,
    /// Another compilation kept the compiler busy for too long.
    #[error("the compiler was busy for longer than {} s", .0.as_secs_f64())]
    CompilerBusy(std::time::Duration),
    /// The chunk's memory cap is larger than this worker's whole `--max-memory` budget.
    #[error("the chunk may use {needed_mb} MiB; this worker's --max-memory is {budget_mb} MiB")]
    OverBudget {
        /// The chunk's `max_memory_mb`.
        needed_mb: u32,
        /// The worker's budget, in MiB.
        budget_mb: u64,
    },
    /// The wasmtime engine or its epoch thread could not be set up.
    #[error("cannot set up the sandbox: {0}")]
    Sandbox(#[source] io::Error),
}
