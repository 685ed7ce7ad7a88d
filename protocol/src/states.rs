//! The states of the grid's domain, one type each, shared by the master (its store, API and
//! trust rules), the CLI and the tests: a job, a chunk, a replica (one lease of a chunk to one
//! worker), a replica's verdict, a job's verification policy and its export to a Delta table.
//!
//! Each is written as its lowercase name everywhere: in the REST API's JSON (serde), in the
//! databases' text columns (with the `sqlx` feature, for any sqlx database whose strings are
//! text), and in the pages (`frontend/src/sse.js` holds the finished job states; a test of the
//! master checks it against [`JobState::FINISHED`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is not one of a state type's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState {
    /// The state type, e.g. `"job state"`.
    pub kind: &'static str,
    /// What was read.
    pub found: String,
}

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {}: {:?}", self.kind, self.found)
    }
}

impl std::error::Error for UnknownState {}

/// Declares a state enum with its names: `as_str`, `ALL`, `Display`, `FromStr`, serde, and
/// (feature `sqlx`) the text column mapping.
macro_rules! states {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The state's name, as stored and as sent.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(text: &str) -> Result<Self, UnknownState> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState { kind: $kind, found: text.to_owned() }),
                }
            }
        }

        #[cfg(feature = "sqlx")]
        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r, DB: sqlx::Database> sqlx::decode::Decode<'r, DB> for $name
        where
            &'r str: sqlx::decode::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<&'r str as sqlx::decode::Decode<'r, DB>>::decode(value)?.parse()?)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'q, DB: sqlx::Database> sqlx::encode::Encode<'q, DB> for $name
        where
            &'q str: sqlx::encode::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&'q str as sqlx::encode::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }
    };
}

states!(
    /// Where a job is in its life.
    JobState, "job state" {
        /// Accepted, no chunk decided yet.
        Queued = "queued",
        /// Some chunks are decided, not all.
        Running = "running",
        /// Every chunk accepted.
        Done = "done",
        /// Every chunk decided, at least one failed.
        Failed = "failed",
        /// Cancelled by its submitter or an admin.
        Cancelled = "cancelled",
    }
);

impl JobState {
    /// The states a job does not leave by itself (the pages stop following it).
    pub const FINISHED: &'static [JobState] =
        &[JobState::Done, JobState::Failed, JobState::Cancelled];

    /// Whether the job has finished (done, failed or cancelled).
    pub fn is_finished(self) -> bool {
        Self::FINISHED.contains(&self)
    }
}

states!(
    /// Where a chunk is: open until its replicas agree (or it fails).
    ChunkState, "chunk state" {
        /// Waiting for results (replicas wanted, leased or returned).
        Open = "open",
        /// Accepted: its output is the agreed one.
        Done = "done",
        /// Failed: an agreed error, no quorum, or too many lost leases.
        Failed = "failed",
        /// Its job was cancelled.
        Cancelled = "cancelled",
    }
);

impl ChunkState {
    /// Whether the chunk was decided (accepted or failed).
    pub fn is_decided(self) -> bool {
        matches!(self, ChunkState::Done | ChunkState::Failed)
    }
}

states!(
    /// One lease of a chunk to one worker.
    ReplicaState, "replica state" {
        /// Held by a worker, no result yet.
        Leased = "leased",
        /// Its result came back.
        Returned = "returned",
        /// The worker went away or its lease ran out.
        Expired = "expired",
        /// The worker handed it back undone.
        Released = "released",
        /// Taken back by the master (chunk decided, job cancelled, worker blacklisted).
        Revoked = "revoked",
    }
);

states!(
    /// What the grid concluded of one returned result.
    Verdict, "verdict" {
        /// It agreed with the accepted outcome.
        Valid = "valid",
        /// It did not (or came from a blacklisted worker).
        Invalid = "invalid",
    }
);

impl Verdict {
    /// `Valid` when `valid`, else `Invalid`.
    pub fn of(valid: bool) -> Verdict {
        if valid {
            Verdict::Valid
        } else {
            Verdict::Invalid
        }
    }
}

states!(
    /// How a job's chunks are verified (docs/trust.md).
    Verification, "verification" {
        /// Every chunk needs `redundancy` agreeing results.
        Fixed = "fixed",
        /// One replica first; trusted workers' results are accepted alone unless spot-checked.
        Adaptive = "adaptive",
    }
);

states!(
    /// Where a job's export to its Delta table is (jobs that name a sink).
    ExportState, "export state" {
        /// Until the job finishes and the export has committed.
        Pending = "pending",
        /// Committed: the table holds the job's rows.
        Done = "done",
        /// Given up after its attempts (the job view says why).
        Failed = "failed",
        /// The job was cancelled: nothing is exported.
        Skipped = "skipped",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(*state));
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::Value::String(state.as_str().into()))
            );
        }
        for state in ReplicaState::ALL {
            assert_eq!(state.to_string().parse::<ReplicaState>(), Ok(*state));
        }
        let unknown = "finished".parse::<JobState>();
        assert_eq!(
            unknown.map_err(|e| e.to_string()),
            Err("unknown job state: \"finished\"".to_owned())
        );
    }

    #[test]
    fn finished_and_decided() {
        assert!(JobState::Cancelled.is_finished());
        assert!(!JobState::Running.is_finished());
        assert!(ChunkState::Failed.is_decided());
        assert!(!ChunkState::Cancelled.is_decided());
    }
}
