//! [`StoreError`]: what can go wrong in the store, in the store's own terms. The REST API maps
//! it to HTTP statuses (`From<StoreError> for crate::error::Error`); the scheduler reads
//! [`StoreError::Unavailable`] as "retry without counting the attempt".

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now (connection lost, pool exhausted or closed):
    /// the same operation may succeed later.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused or failed a statement.
    #[error("a database statement failed")]
    Database(#[source] sqlx::Error),
    /// A job names a module that is not stored (or is being deleted).
    #[error("no module `{0}` has been uploaded (POST /api/v1/modules)")]
    UnknownModule(String),
    /// A tenant quota the store checks inside its transaction (so that concurrent submissions
    /// cannot both pass it) refused the operation.
    #[error("quota {quota:?} exceeded: limit {limit}, in use {used}, requested {requested}")]
    QuotaExceeded {
        /// Which quota.
        quota: Quota,
        /// The tenant's limit.
        limit: u64,
        /// What the tenant holds now.
        used: u64,
        /// What the operation asked for.
        requested: u64,
    },
    /// A value too large for the store (e.g. more chunks than a job can number).
    #[error("{0}")]
    TooLarge(String),
    /// The database holds what the store never writes: a bug, or another writer.
    #[error("stored data is not what the store wrote")]
    Corrupt(#[source] anyhow::Error),
}

/// The quotas the store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Chunks of the tenant's unfinished jobs.
    OpenChunks,
    /// Bytes of the modules the tenant holds.
    ModuleBytes,
}

/// The store's results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Database(error)
        }
    }
}

/// Whether `error` says the database cannot serve us right now rather than that it refuses
/// the statement: lost connections, and what a primary going down or a failover answers
/// (SQLSTATE class 08, connection exceptions; `57P01`-`57P03`, shut down or not yet
/// accepting connections; `25006`, a read-only transaction on a standby that was the primary;
/// `53300`, too many connections). Retrying those later is right; a result must never be
/// dropped as "refused by the database" for one of them.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "25006" | "53300")
        }),
        _ => false,
    }
}

impl From<StoreError> for crate::error::Error {
    fn from(error: StoreError) -> Self {
        use crate::error::Error;
        match error {
            StoreError::Unavailable(source) => Error::Unavailable(source),
            StoreError::Database(source) => Error::Internal(source.into()),
            StoreError::UnknownModule(_) => Error::invalid("unknown_module", error.to_string()),
            StoreError::QuotaExceeded {
                quota,
                limit,
                used,
                requested,
            } => match quota {
                Quota::OpenChunks => crate::quota::open_chunks_exceeded(limit, used, requested),
                Quota::ModuleBytes => crate::quota::module_bytes_exceeded(limit, used, requested),
            },
            StoreError::TooLarge(message) => Error::TooLarge(message),
            StoreError::Corrupt(source) => Error::Internal(source),
        }
    }
}
