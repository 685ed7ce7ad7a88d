//! One WebSocket session with the master, as a state machine with no I/O: text frames in,
//! decisions and frames out. [`crate::browser`] owns the socket and the timers and feeds this.
//!
//! Keeping the protocol logic free of browser types lets it run (and be tested) natively.
//! What is *not* here: computing a chunk ([`crate::compute`]), pacing ([`crate::duty_cycle`],
//! [`crate::backoff`]) and talking to the page ([`crate::status`]).
//!
//! A session is `AwaitingWelcome` from the hello until the master's welcome, then `Active`.
//! Assignments queue here until the compute loop takes them; a revoke drops them from the
//! queue. The browser worker computes synchronously, one chunk at a time, so a revoke can
//! never arrive while its chunk is running: it either finds the lease queued or already done.

use std::collections::VecDeque;

use grid_protocol::{
    LeaseId, MasterMessage, PROTOCOL_VERSION, Task, WorkerKind, WorkerMessage, to_json,
};

/// Error codes with which a master refuses a hello for its protocol version. Such a refusal is
/// final: reconnecting would be refused again. (The master sends `unsupported_protocol`.)
const VERSION_MISMATCH_CODES: &[&str] = &["unsupported_protocol"];

/// One assignment waiting for the compute loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The master's lease, quoted in the result.
    pub lease: LeaseId,
    /// What to run.
    pub task: Task,
    /// The chunk's input.
    pub input: serde_json::Value,
}

/// What the welcome said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Send a heartbeat this often, in milliseconds (at least one second).
    pub heartbeat_ms: u32,
    /// Largest result frame the master accepts, in bytes (`None`: no limit given).
    pub max_message_bytes: Option<usize>,
}

/// What the browser worker should do after a frame from the master.
#[derive(Debug, Clone, PartialEq)]
pub enum Reaction {
    /// Nothing visible changed.
    Nothing,
    /// The master welcomed us: start heartbeats, reset the reconnect backoff.
    Welcomed(Welcome),
    /// New work is queued: make sure the compute loop runs.
    WorkQueued,
}

/// Why a session must end. The browser worker closes the socket and, unless
/// [`SessionError::is_fatal`], reconnects with backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The master sent something that is not a protocol message, or one out of place.
    Malformed(String),
    /// The master sent a protocol `error` (it closes the connection after it).
    Refused {
        /// The master's stable code.
        code: String,
        /// Its explanation.
        message: String,
    },
    /// The master speaks another protocol version: reconnecting cannot help.
    ProtocolMismatch(String),
}

impl SessionError {
    /// Whether reconnecting is pointless.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SessionError::ProtocolMismatch(_))
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Malformed(why) => write!(f, "malformed message from the master: {why}"),
            SessionError::Refused { code, message } => {
                write!(f, "the master closed the session ({code}): {message}")
            }
            SessionError::ProtocolMismatch(why) => write!(
                f,
                "this page speaks protocol {PROTOCOL_VERSION} but the master does not ({why}); reload the page"
            ),
        }
    }
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Hello sent, welcome not yet received.
    AwaitingWelcome,
    /// Welcomed.
    Active(Welcome),
}

/// The state of one session.
#[derive(Debug)]
pub struct Session {
    /// Welcome pending, or what it said.
    phase: Phase,
    /// Assignments not yet computed, in arrival order (the master's prefetch).
    queue: VecDeque<Assignment>,
}

impl Session {
    /// A new session and its hello frame: `slots` is 1 for a browser worker, which computes one
    /// chunk at a time per Web Worker.
    pub fn start(worker_id: &str, slots: u32) -> (Session, String) {
        let hello = WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            worker_id: worker_id.to_owned(),
            slots,
            kind: WorkerKind::Browser,
        };
        let session = Session {
            phase: Phase::AwaitingWelcome,
            queue: VecDeque::new(),
        };
        (session, to_json(&hello))
    }

    /// The welcome, once received.
    pub fn welcome(&self) -> Option<Welcome> {
        match self.phase {
            Phase::Active(welcome) => Some(welcome),
            Phase::AwaitingWelcome => None,
        }
    }

    /// Assignments waiting to be computed.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Handle one text frame from the master. `Err` ends the session.
    pub fn on_text(&mut self, text: &str) -> Result<Reaction, SessionError> {
        let message = MasterMessage::from_json(text)
            .map_err(|error| SessionError::Malformed(error.to_string()))?;
        match (self.phase, message) {
            (
                Phase::AwaitingWelcome,
                MasterMessage::Welcome {
                    protocol,
                    heartbeat_seconds,
                    max_message_bytes,
                },
            ) => {
                if protocol != PROTOCOL_VERSION {
                    return Err(SessionError::ProtocolMismatch(format!(
                        "it welcomed us with protocol {protocol}"
                    )));
                }
                let welcome = Welcome {
                    heartbeat_ms: heartbeat_seconds.clamp(1, 3600) * 1000,
                    max_message_bytes: usize::try_from(max_message_bytes)
                        .ok()
                        .filter(|&limit| limit > 0),
                };
                self.phase = Phase::Active(welcome);
                Ok(Reaction::Welcomed(welcome))
            }
            (_, MasterMessage::Error { code, message }) => {
                if VERSION_MISMATCH_CODES.contains(&code.as_str()) {
                    Err(SessionError::ProtocolMismatch(format!("{code}: {message}")))
                } else {
                    Err(SessionError::Refused { code, message })
                }
            }
            (Phase::AwaitingWelcome, other) => Err(SessionError::Malformed(format!(
                "expected a welcome, got {}",
                kind_of(&other)
            ))),
            (Phase::Active(_), MasterMessage::Welcome { .. }) => {
                Err(SessionError::Malformed("a second welcome".into()))
            }
            (
                Phase::Active(_),
                MasterMessage::Assign {
                    lease, task, input, ..
                },
            ) => {
                if self.queue.iter().any(|queued| queued.lease == lease) {
                    // Harmless but odd; computing it twice would only waste time.
                    return Ok(Reaction::Nothing);
                }
                self.queue.push_back(Assignment { lease, task, input });
                Ok(Reaction::WorkQueued)
            }
            (Phase::Active(_), MasterMessage::Revoke { leases }) => {
                self.queue.retain(|queued| !leases.contains(&queued.lease));
                Ok(Reaction::Nothing)
            }
            // A result the master did not take (the lease was revoked or expired meanwhile).
            (Phase::Active(_), MasterMessage::Rejected { .. }) => Ok(Reaction::Nothing),
        }
    }

    /// The next assignment to compute, oldest first.
    pub fn next_assignment(&mut self) -> Option<Assignment> {
        self.queue.pop_front()
    }

    /// A heartbeat frame, once welcomed.
    pub fn heartbeat(&self) -> Option<String> {
        self.welcome().map(|_| to_json(&WorkerMessage::Heartbeat))
    }

    /// Give every queued assignment back (pausing): the frame to send, if any were queued.
    /// The master reissues released leases at once instead of waiting for their deadline.
    pub fn release_all(&mut self) -> Option<String> {
        if self.queue.is_empty() || self.welcome().is_none() {
            return None;
        }
        let leases = self.queue.drain(..).map(|queued| queued.lease).collect();
        Some(to_json(&WorkerMessage::Release { leases }))
    }
}

/// The `type` tag of a master message, for error messages.
fn kind_of(message: &MasterMessage) -> &'static str {
    match message {
        MasterMessage::Welcome { .. } => "welcome",
        MasterMessage::Assign { .. } => "assign",
        MasterMessage::Revoke { .. } => "revoke",
        MasterMessage::Rejected { .. } => "rejected",
        MasterMessage::Error { .. } => "error",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn welcomed() -> Session {
        let (mut session, _) = Session::start("browser-1", 1);
        let welcome = to_json(&MasterMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_seconds: 15,
            max_message_bytes: 4096,
        });
        assert_eq!(
            session.on_text(&welcome),
            Ok(Reaction::Welcomed(Welcome {
                heartbeat_ms: 15_000,
                max_message_bytes: Some(4096),
            }))
        );
        session
    }

    fn assign(lease: LeaseId) -> String {
        to_json(&MasterMessage::Assign {
            lease,
            task: Task::kernel("primes"),
            input: json!({"start": 0, "end": 100}),
            deadline_seconds: 60,
        })
    }

    #[test]
    fn hello_is_a_browser_hello() {
        let (session, hello) = Session::start("browser-00ff", 1);
        assert_eq!(
            WorkerMessage::from_json(&hello).unwrap(),
            WorkerMessage::Hello {
                protocol: PROTOCOL_VERSION,
                worker_id: "browser-00ff".into(),
                slots: 1,
                kind: WorkerKind::Browser,
            }
        );
        assert_eq!(session.welcome(), None);
        assert_eq!(session.heartbeat(), None);
    }

    #[test]
    fn assignments_queue_in_order_and_revokes_remove_them() {
        let mut session = welcomed();
        for lease in [5, 6, 7] {
            assert_eq!(session.on_text(&assign(lease)), Ok(Reaction::WorkQueued));
        }
        // A duplicate assignment is ignored.
        assert_eq!(session.on_text(&assign(6)), Ok(Reaction::Nothing));
        let revoke = to_json(&MasterMessage::Revoke {
            leases: vec![6, 99],
        });
        assert_eq!(session.on_text(&revoke), Ok(Reaction::Nothing));
        assert_eq!(session.next_assignment().map(|a| a.lease), Some(5));
        assert_eq!(session.next_assignment().map(|a| a.lease), Some(7));
        assert_eq!(session.next_assignment(), None);
    }

    #[test]
    fn release_all_gives_back_the_queue() {
        let mut session = welcomed();
        assert_eq!(session.release_all(), None);
        session.on_text(&assign(1)).unwrap();
        session.on_text(&assign(2)).unwrap();
        let release = session.release_all().unwrap();
        assert_eq!(
            WorkerMessage::from_json(&release).unwrap(),
            WorkerMessage::Release { leases: vec![1, 2] }
        );
        assert_eq!(session.queued(), 0);
    }

    #[test]
    fn heartbeats_follow_the_welcome() {
        let session = welcomed();
        assert_eq!(
            WorkerMessage::from_json(&session.heartbeat().unwrap()).unwrap(),
            WorkerMessage::Heartbeat
        );
        // A zero interval is not a busy loop.
        let (mut session, _) = Session::start("b", 1);
        let reaction = session.on_text(&to_json(&MasterMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_seconds: 0,
            max_message_bytes: 0,
        }));
        assert_eq!(
            reaction,
            Ok(Reaction::Welcomed(Welcome {
                heartbeat_ms: 1000,
                max_message_bytes: None,
            }))
        );
    }

    #[test]
    fn garbage_ends_the_session_without_panicking() {
        for text in [
            "",
            "{",
            "null",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"type":"assign","lease":"x"}"#,
            r#"{"type":"welcome","protocol":1,"heartbeat_seconds":-1,"max_message_bytes":1}"#,
        ] {
            let mut session = welcomed();
            assert!(
                matches!(session.on_text(text), Err(SessionError::Malformed(_))),
                "{text:?}"
            );
        }
        // Work before the welcome, or a second welcome, is out of place.
        let (mut session, _) = Session::start("b", 1);
        assert!(matches!(
            session.on_text(&assign(1)),
            Err(SessionError::Malformed(_))
        ));
        let mut session = welcomed();
        let again = to_json(&MasterMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_seconds: 15,
            max_message_bytes: 1,
        });
        assert!(matches!(
            session.on_text(&again),
            Err(SessionError::Malformed(_))
        ));
    }

    #[test]
    fn refusals_and_version_mismatch() {
        let (mut session, _) = Session::start("b", 1);
        let refusal = to_json(&MasterMessage::Error {
            code: "unsupported_protocol".into(),
            message: "this master speaks protocol 2, not 1".into(),
        });
        let error = session.on_text(&refusal).unwrap_err();
        assert!(error.is_fatal(), "{error}");

        let mut session = welcomed();
        let limited = to_json(&MasterMessage::Error {
            code: "rate_limited".into(),
            message: "slow down".into(),
        });
        let error = session.on_text(&limited).unwrap_err();
        assert!(!error.is_fatal());
        assert_eq!(
            error.to_string(),
            "the master closed the session (rate_limited): slow down"
        );

        let (mut session, _) = Session::start("b", 1);
        let newer = to_json(&MasterMessage::Welcome {
            protocol: PROTOCOL_VERSION + 1,
            heartbeat_seconds: 15,
            max_message_bytes: 1,
        });
        assert!(session.on_text(&newer).unwrap_err().is_fatal());
    }
}
