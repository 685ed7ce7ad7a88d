//! The wire protocol spoken over the master's WebSocket endpoint (`/ws`).
//!
//! Layout:
//! - [`WorkerMessage`]: what a worker (native `grid-worker` or the browser worker) sends.
//! - [`MasterMessage`]: what the master sends back.
//! - [`Outcome`] and [`outcome_digest`]: how a replica's result is canonicalised and hashed, so
//!   the master compares replicas by digest and every platform hashes the same bytes.
//!
//! Every message is one JSON text frame, tagged by `"type"`. A session starts with
//! [`WorkerMessage::Hello`] and the master answers [`MasterMessage::Welcome`] (or
//! [`MasterMessage::Error`] and a close). The protocol is versioned by [`PROTOCOL_VERSION`]: a
//! master refuses a hello with a version it does not speak.
//!
//! Flow control is credit based: the hello says how many `slots` (concurrent chunks) the worker
//! runs; the master keeps that many assignments plus a small prefetch outstanding. Each
//! [`WorkerMessage::Result`] frees one credit.
//!
//! [`backoff`] is the reconnect delay every client of the master uses.
//!
//! [`states`] holds the domain's states (job, chunk, replica, verdict, verification), shared by
//! the master, the CLI and the tests.
//!
//! With the `tls` feature, [`tls`] holds the TLS client settings the native clients
//! (`grid-worker`, `grid-loadgen`) share for `wss://` masters.

#[cfg(feature = "tls")]
pub mod tls;

pub mod backoff;
pub mod states;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The protocol version this crate speaks. Bumped on any incompatible change.
///
/// Version 2 added [`Task::Module`]: a version-1 worker cannot run uploaded modules, so a
/// master speaking version 2 refuses it (it stops with an "upgrade" message).
pub const PROTOCOL_VERSION: u32 = 2;

/// `MasterMessage::Error` code for a hello whose protocol version the master does not speak;
/// reconnecting cannot fix it, so workers stop instead of retrying.
pub const ERROR_UNSUPPORTED_PROTOCOL: &str = "unsupported_protocol";

/// Most slots a single connection may announce; more cores should use more connections.
pub const MAX_SLOTS: u32 = 256;

/// Longest worker identity accepted in a hello.
pub const MAX_WORKER_ID_LEN: usize = 128;

/// A lease: one assignment of one chunk to one worker, named by the master.
pub type LeaseId = i64;

/// What kind of program the worker is; used for metrics and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerKind {
    /// `grid-worker`, the native CLI.
    Native,
    /// The Rust/WASM worker in a browser tab.
    Browser,
}

/// What to run for an assignment. On the wire: `{"kind": "kernel", "name": "primes"}` or
/// `{"kind": "module", "id": "sha256:...", "timeout_ms": 30000, "max_memory_mb": 256}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Task {
    /// A built-in kernel from `grid-kernels`, by name.
    Kernel {
        /// The kernel's name.
        name: String,
    },
    /// An uploaded WebAssembly task module (see `grid-task-abi` and `docs/task-abi.md`).
    Module {
        /// Its content address, `sha256:<hex>`; the bytes are at `GET /api/v1/modules/{id}`
        /// on the master, and a worker checks they hash to this id.
        id: String,
        /// Wall-clock limit of one chunk; past it the outcome is a timeout error.
        timeout_ms: u32,
        /// Linear-memory cap of one chunk, in MiB.
        max_memory_mb: u32,
        /// How the module's output bytes become the chunk's output: JSON text (the default,
        /// left out on the wire) or any UTF-8 text, as a JSON string.
        #[serde(default, skip_serializing_if = "OutputMode::is_json")]
        output: OutputMode,
    },
}

/// How a task module's output bytes (what `grid_run` returns, or a WASI program's standard
/// output) become a chunk's output value: a job's `"output"` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// UTF-8 JSON text, parsed (the default).
    #[default]
    Json,
    /// UTF-8 text, taken as a JSON string.
    Text,
}

impl OutputMode {
    /// Whether this is the default, [`OutputMode::Json`].
    pub fn is_json(&self) -> bool {
        *self == OutputMode::Json
    }

    /// The name a job uses for it: `json` or `text`.
    pub fn name(self) -> &'static str {
        match self {
            OutputMode::Json => "json",
            OutputMode::Text => "text",
        }
    }

    /// The mode called `name` in a job.
    pub fn from_name(name: &str) -> Option<OutputMode> {
        match name {
            "json" => Some(OutputMode::Json),
            "text" => Some(OutputMode::Text),
            _ => None,
        }
    }
}

impl Task {
    /// A built-in kernel task.
    pub fn kernel(name: impl Into<String>) -> Task {
        Task::Kernel { name: name.into() }
    }
}

/// Messages from a worker to the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerMessage {
    /// First message of every session.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Persistent identity (survives restarts and reloads); replicas of one chunk always go
        /// to distinct identities. 1 to [`MAX_WORKER_ID_LEN`] characters of `[A-Za-z0-9._:-]`.
        worker_id: String,
        /// Chunks this worker computes at once (1 to [`MAX_SLOTS`]).
        slots: u32,
        /// Native or browser.
        kind: WorkerKind,
        /// The answer to the master's [`MasterMessage::Challenge`], when it asked for one: a
        /// counter such that [`work::is_solution`] holds (see [`work`]). Absent in a first hello.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        work: Option<u64>,
    },
    /// The outcome of an assignment this session holds.
    Result {
        /// The lease from the [`MasterMessage::Assign`].
        lease: LeaseId,
        /// What the computation gave.
        outcome: Outcome,
    },
    /// Give assignments back without computing them (shutting down, or too much queued).
    /// The master reissues them at once.
    Release {
        /// Leases this session holds and will not compute.
        leases: Vec<LeaseId>,
    },
    /// Stop sending new assignments to this session (a graceful shutdown has begun).
    Drain,
    /// Keep-alive; the master closes sessions that stay silent too long.
    Heartbeat,
}

/// The outcome of computing one chunk. Two replicas agree when their outcomes' digests match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The kernel's output (any JSON value).
    Ok(serde_json::Value),
    /// The kernel refused the input or failed; the message says why. Honest workers fail the
    /// same way on the same input, so errors are compared like outputs.
    Err(String),
}

/// Messages from the master to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MasterMessage {
    /// Answer to a valid hello.
    Welcome {
        /// The version the master speaks (equal to the worker's).
        protocol: u32,
        /// Send a heartbeat at least this often; silence for three intervals ends the session.
        heartbeat_seconds: u32,
        /// Largest result frame the master accepts, in bytes.
        max_message_bytes: u32,
        /// The WebSocket URLs of the other live masters sharing this one's database, to fail
        /// over to when this one dies or drains (absent when there are none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        masters: Vec<String>,
    },
    /// Answer to a hello on a master that asks new sessions for a proof of work
    /// (`--hello-work-bits`): the worker sends its hello again with `work` set to a solution of
    /// this challenge (see [`work`]); the master answers that with the welcome.
    Challenge {
        /// Random, fresh for this connection, hex.
        seed: String,
        /// Leading zero bits the solution's hash must have.
        bits: u32,
    },
    /// Compute one chunk.
    Assign {
        /// Quote this in the result.
        lease: LeaseId,
        /// What to run.
        task: Task,
        /// The chunk's input.
        input: serde_json::Value,
        /// Seconds until the master gives up on this lease and reissues it.
        deadline_seconds: u32,
    },
    /// Stop working on these leases (chunk already decided, job cancelled, or lease expired);
    /// results for them will be rejected.
    Revoke {
        /// Leases that no longer count.
        leases: Vec<LeaseId>,
    },
    /// A result was not accepted (not a lease this session holds, or no longer held).
    Rejected {
        /// The lease the result named.
        lease: LeaseId,
        /// Why.
        reason: String,
    },
    /// A protocol error; the master closes the connection after sending it.
    Error {
        /// Stable machine-readable code (`bad_message`, `too_large`, `rate_limited`, ...).
        code: String,
        /// Human-readable explanation.
        message: String,
    },
}

impl WorkerMessage {
    /// Parse a text frame.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl MasterMessage {
    /// Parse a text frame.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Serialise a message as one text frame.
pub fn to_json<T: Serialize>(message: &T) -> String {
    // Serialising these types cannot fail: all keys are strings and values are plain data.
    serde_json::to_string(message).unwrap_or_else(|_| String::from("{}"))
}

/// The result frame a worker sends for `lease`. A frame larger than the master's
/// `max_message_bytes` (from its welcome) is replaced by a deterministic error outcome, so honest
/// workers — native or browser — still agree on that chunk. Returns the frame and whether it
/// was replaced.
pub fn result_frame(
    lease: LeaseId,
    outcome: Outcome,
    max_message_bytes: Option<usize>,
) -> (String, bool) {
    let text = to_json(&WorkerMessage::Result { lease, outcome });
    match max_message_bytes {
        Some(limit) if text.len() > limit => {
            let outcome = Outcome::Err(format!(
                "output too large: the master accepts results of at most {limit} bytes"
            ));
            (to_json(&WorkerMessage::Result { lease, outcome }), true)
        }
        _ => (text, false),
    }
}

/// The proof of work a master may ask of every new session before it welcomes it
/// ([`MasterMessage::Challenge`]): find a counter `n` such that
/// `SHA-256("grid-hello-work\0" || seed || "\0" || worker_id || "\0" || n as 8 little-endian bytes)`
/// starts with `bits` zero bits. Finding one takes about `2^bits` hashes; checking it, one.
/// The seed is fresh per connection, so work cannot be saved up or shared between sessions,
/// and the identity is hashed in, so one solution serves one identity.
pub mod work {
    use sha2::{Digest, Sha256};

    /// The most bits a master may ask for (2^32 hashes is minutes of a core's time).
    pub const MAX_BITS: u32 = 32;

    fn hash(seed: &str, worker_id: &str, counter: u64) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"grid-hello-work\0");
        hasher.update(seed.as_bytes());
        hasher.update(b"\0");
        hasher.update(worker_id.as_bytes());
        hasher.update(b"\0");
        hasher.update(counter.to_le_bytes());
        hasher.finalize().into()
    }

    fn leading_zero_bits(digest: &[u8; 32]) -> u32 {
        let mut bits = 0;
        for byte in digest {
            if *byte == 0 {
                bits += 8;
            } else {
                return bits + byte.leading_zeros();
            }
        }
        bits
    }

    /// Whether `counter` solves the challenge `(seed, bits)` for `worker_id`.
    pub fn is_solution(seed: &str, worker_id: &str, bits: u32, counter: u64) -> bool {
        leading_zero_bits(&hash(seed, worker_id, counter)) >= bits.min(MAX_BITS)
    }

    /// The first counter that solves the challenge (about `2^bits` hashes).
    pub fn solve(seed: &str, worker_id: &str, bits: u32) -> u64 {
        (0..=u64::MAX)
            .find(|counter| is_solution(seed, worker_id, bits, *counter))
            .unwrap_or(u64::MAX)
    }
}

/// Returns true if `id` is an acceptable worker identity.
pub fn is_valid_worker_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_WORKER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Canonical bytes of a JSON value: object keys sorted, no insignificant whitespace.
///
/// `serde_json` keeps objects in a `BTreeMap` unless its `preserve_order` feature is enabled
/// somewhere in the dependency graph; sorting here keeps digests stable either way.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(key.clone()).to_string());
                    out.push(':');
                    write(item, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

impl Outcome {
    /// The canonical text stored for this outcome: the output's canonical JSON, or the error.
    pub fn canonical_text(&self) -> String {
        match self {
            Outcome::Ok(value) => canonical_json(value),
            Outcome::Err(message) => message.clone(),
        }
    }

    /// True for [`Outcome::Err`].
    pub fn is_err(&self) -> bool {
        matches!(self, Outcome::Err(_))
    }
}

/// SHA-256 over a domain tag and the outcome's canonical text: replicas agree exactly when
/// their digests are equal. The tag keeps an error message from colliding with an output.
pub fn outcome_digest(outcome: &Outcome) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(if outcome.is_err() {
        b"err\0"
    } else {
        b"ok\0\0"
    });
    hasher.update(outcome.canonical_text().as_bytes());
    hasher.finalize().into()
}

/// Hex form of a digest, for logs and APIs.
pub fn digest_hex(digest: &[u8; 32]) -> String {
    hex::encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hello_work_is_found_checked_and_bound_to_seed_and_identity() {
        let seed = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let counter = work::solve(seed, "w-1", 12);
        assert!(work::is_solution(seed, "w-1", 12, counter));
        // The inputs are fixed, so this is deterministic: the counter that solves 16 bits for
        // w-1 under this seed does not for another identity or another seed.
        let strong = work::solve(seed, "w-1", 16);
        assert!(work::is_solution(seed, "w-1", 16, strong));
        assert!(!work::is_solution(seed, "w-2", 16, strong));
        assert!(!work::is_solution("00", "w-1", 16, strong));
        // Zero bits: anything goes; the maximum is clamped.
        assert!(work::is_solution(seed, "w-1", 0, 0));
        let hello = WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            worker_id: "w-1".into(),
            slots: 1,
            kind: WorkerKind::Browser,
            work: Some(counter),
        };
        let text = to_json(&hello);
        assert!(text.contains(&format!(r#""work":{counter}"#)), "{text}");
        assert_eq!(WorkerMessage::from_json(&text).ok(), Some(hello));
        let challenge = MasterMessage::Challenge {
            seed: seed.into(),
            bits: 12,
        };
        let text = to_json(&challenge);
        assert!(text.contains(r#""type":"challenge""#), "{text}");
        assert_eq!(MasterMessage::from_json(&text).ok(), Some(challenge));
    }

    #[test]
    fn messages_round_trip_with_type_tags() {
        let hello = WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            worker_id: "w-1".into(),
            slots: 4,
            kind: WorkerKind::Native,
            work: None,
        };
        let text = to_json(&hello);
        assert!(
            !text.contains(r#""work""#),
            "a first hello carries no work: {text}"
        );
        assert!(text.contains(r#""type":"hello""#), "{text}");
        assert_eq!(WorkerMessage::from_json(&text).ok(), Some(hello));

        let assign = MasterMessage::Assign {
            lease: 7,
            task: Task::kernel("primes"),
            input: json!({"start": 0, "end": 10}),
            deadline_seconds: 60,
        };
        let text = to_json(&assign);
        assert!(
            text.contains(r#""task":{"kind":"kernel","name":"primes"}"#),
            "{text}"
        );
        assert_eq!(MasterMessage::from_json(&text).ok(), Some(assign));

        let module = MasterMessage::Assign {
            lease: 8,
            task: Task::Module {
                id: format!("sha256:{}", "ab".repeat(32)),
                timeout_ms: 1000,
                max_memory_mb: 64,
                output: OutputMode::Json,
            },
            input: json!([1, 2]),
            deadline_seconds: 60,
        };
        let text = to_json(&module);
        assert!(text.contains(r#""kind":"module""#), "{text}");
        // The default output mode stays off the wire: older workers read the same message.
        assert!(!text.contains("output"), "{text}");
        assert_eq!(MasterMessage::from_json(&text).ok(), Some(module));
        let text_output = Task::Module {
            id: format!("sha256:{}", "ab".repeat(32)),
            timeout_ms: 1000,
            max_memory_mb: 64,
            output: OutputMode::Text,
        };
        let wire = serde_json::to_string(&text_output).unwrap_or_default();
        assert!(wire.contains(r#""output":"text""#), "{wire}");
        assert_eq!(serde_json::from_str::<Task>(&wire).ok(), Some(text_output));

        let result = WorkerMessage::Result {
            lease: 7,
            outcome: Outcome::Ok(json!({"count": 4})),
        };
        let text = to_json(&result);
        assert_eq!(
            text,
            r#"{"type":"result","lease":7,"outcome":{"ok":{"count":4}}}"#
        );
        assert_eq!(WorkerMessage::from_json(&text).ok(), Some(result));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for text in [
            "",
            "{",
            "null",
            r#"{"type":"nope"}"#,
            r#"{"type":"result","lease":"x","outcome":{"ok":1}}"#,
            r#"{"type":"hello","protocol":1,"worker_id":"a","slots":1,"kind":"native","extra":1}"#,
        ] {
            assert!(WorkerMessage::from_json(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn digest_ignores_key_order_but_not_values() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[1,{"y":2,"x":3}]}"#)
            .unwrap_or(serde_json::Value::Null);
        let b = json!({"a": [1, {"x": 3, "y": 2}], "b": 1});
        assert_eq!(canonical_json(&a), r#"{"a":[1,{"x":3,"y":2}],"b":1}"#);
        assert_eq!(
            outcome_digest(&Outcome::Ok(a.clone())),
            outcome_digest(&Outcome::Ok(b))
        );
        assert_ne!(
            outcome_digest(&Outcome::Ok(a)),
            outcome_digest(&Outcome::Ok(json!({"a": [1, {"x": 3, "y": 2}], "b": 2})))
        );
        // An error never collides with an output whose text is the same.
        assert_ne!(
            outcome_digest(&Outcome::Err("1".into())),
            outcome_digest(&Outcome::Ok(json!(1)))
        );
    }

    #[test]
    fn worker_ids_are_restricted() {
        assert!(is_valid_worker_id("browser:3f2a-11"));
        assert!(!is_valid_worker_id(""));
        assert!(!is_valid_worker_id("has space"));
        assert!(!is_valid_worker_id(&"x".repeat(MAX_WORKER_ID_LEN + 1)));
    }
}
