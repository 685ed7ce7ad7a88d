//! One WebSocket session with the master, as a state machine with no I/O: text frames in,
//! decisions and frames out. [`crate::browser`] owns the socket and the timers and feeds this.
//!
//! Keeping the protocol logic free of browser types lets it run (and be tested) natively.
//! What is *not* here: computing a chunk ([`crate::compute`]), pacing ([`crate::duty_cycle`],
//! [`crate::backoff`]) and talking to the page ([`crate::status`]).
//!
//! A session is `AwaitingWelcome` from the hello until the master's welcome, then `Active`.
//! Assignments queue here until the compute loop takes them; a revoke drops them from the
//! queue. One chunk at a time is *running* ([`Session::next_assignment`] until
//! [`Session::finish`] or [`Session::give_back`]): a kernel chunk only for the length of a
//! synchronous call, but a task-module chunk runs in a sandbox Web Worker while this session
//! goes on receiving frames. So a revoke can arrive while its chunk runs: the session then
//! forgets the running lease ([`Reaction::RunningRevoked`], so the browser can stop the
//! sandbox) and [`Session::finish`] says the late result must not be sent.

use std::collections::VecDeque;

use grid_protocol::{
    LeaseId, MasterMessage, PROTOCOL_VERSION, Task, WorkerKind, WorkerMessage, to_json,
};

/// Error codes with which a master refuses a hello for its protocol version. Such a refusal is
/// final: reconnecting would be refused again.
const VERSION_MISMATCH_CODES: &[&str] = &[grid_protocol::ERROR_UNSUPPORTED_PROTOCOL];

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
    /// The master took back the lease of the running chunk: stop computing it (its result
    /// would be refused) and free the slot.
    RunningRevoked,
    /// Send this frame to the master (the hello again, with the proof of work it asked for).
    Reply(String),
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
    /// The lease of the chunk being computed, if any (and not revoked meanwhile).
    running: Option<LeaseId>,
    /// The identity and slots of the hello, to say it again with a proof of work.
    worker_id: String,
    slots: u32,
    /// Whether the master already asked for a proof of work (it asks at most once).
    challenged: bool,
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
            work: None,
        };
        let session = Session {
            phase: Phase::AwaitingWelcome,
            queue: VecDeque::new(),
            running: None,
            worker_id: worker_id.to_owned(),
            slots,
            challenged: false,
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

    /// The lease of the chunk being computed, if any.
    pub fn running(&self) -> Option<LeaseId> {
        self.running
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
                    ..
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
            (Phase::AwaitingWelcome, MasterMessage::Challenge { seed, bits })
                if !self.challenged =>
            {
                // The master asks for a proof of work (`--hello-work-bits`). This runs in a Web
                // Worker, so a second or two of hashing blocks nothing the volunteer sees.
                self.challenged = true;
                if bits > grid_protocol::work::MAX_BITS {
                    return Err(SessionError::Malformed(format!(
                        "a challenge of {bits} bits"
                    )));
                }
                let work = grid_protocol::work::solve(&seed, &self.worker_id, bits);
                Ok(Reaction::Reply(to_json(&WorkerMessage::Hello {
                    protocol: PROTOCOL_VERSION,
                    worker_id: self.worker_id.clone(),
                    slots: self.slots,
                    kind: WorkerKind::Browser,
                    work: Some(work),
                })))
            }
            (Phase::AwaitingWelcome, other) => Err(SessionError::Malformed(format!(
                "expected a welcome, got {}",
                kind_of(&other)
            ))),
            (Phase::Active(_), MasterMessage::Welcome { .. }) => {
                Err(SessionError::Malformed("a second welcome".into()))
            }
            (Phase::Active(_), MasterMessage::Challenge { .. }) => Err(SessionError::Malformed(
                "a challenge after the welcome".into(),
            )),
            (
                Phase::Active(_),
                MasterMessage::Assign {
                    lease, task, input, ..
                },
            ) => {
                if self.running == Some(lease) || self.queue.iter().any(|q| q.lease == lease) {
                    // Harmless but odd; computing it twice would only waste time.
                    return Ok(Reaction::Nothing);
                }
                self.queue.push_back(Assignment { lease, task, input });
                Ok(Reaction::WorkQueued)
            }
            (Phase::Active(_), MasterMessage::Revoke { leases }) => {
                self.queue.retain(|queued| !leases.contains(&queued.lease));
                match self.running {
                    Some(running) if leases.contains(&running) => {
                        self.running = None;
                        Ok(Reaction::RunningRevoked)
                    }
                    _ => Ok(Reaction::Nothing),
                }
            }
            // A result the master did not take (the lease was revoked or expired meanwhile).
            (Phase::Active(_), MasterMessage::Rejected { .. }) => Ok(Reaction::Nothing),
        }
    }

    /// The next assignment to compute, oldest first; it is running until [`Session::finish`]
    /// or [`Session::give_back`]. `None` while a chunk is running: one slot, one chunk.
    pub fn next_assignment(&mut self) -> Option<Assignment> {
        if self.running.is_some() {
            return None;
        }
        let assignment = self.queue.pop_front()?;
        self.running = Some(assignment.lease);
        Some(assignment)
    }

    /// The running chunk of `lease` is computed: whether its result should be sent (`false`
    /// when the lease was revoked meanwhile, or is not the running one).
    pub fn finish(&mut self, lease: LeaseId) -> bool {
        if self.running == Some(lease) {
            self.running = None;
            true
        } else {
            false
        }
    }

    /// Give the running chunk of `lease` back without a result (this worker cannot compute
    /// it, e.g. its module cannot be fetched): the release frame to send, if it is still ours.
    pub fn give_back(&mut self, lease: LeaseId) -> Option<String> {
        if !self.finish(lease) {
            return None;
        }
        Some(to_json(&WorkerMessage::Release {
            leases: vec![lease],
        }))
    }

    /// A heartbeat frame, once welcomed.
    pub fn heartbeat(&self) -> Option<String> {
        self.welcome().map(|_| to_json(&WorkerMessage::Heartbeat))
    }

    /// Give every assignment back, the running one included (pausing): the frame to send, if
    /// any were held. The master reissues released leases at once instead of waiting for
    /// their deadline.
    pub fn release_all(&mut self) -> Option<String> {
        // Nothing is held before the welcome.
        self.welcome()?;
        let leases: Vec<LeaseId> = self
            .running
            .take()
            .into_iter()
            .chain(self.queue.drain(..).map(|queued| queued.lease))
            .collect();
        if leases.is_empty() {
            return None;
        }
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
        MasterMessage::Challenge { .. } => "challenge",
        MasterMessage::Error { .. } => "error",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_challenge_is_answered_once_with_a_hello_that_solves_it() {
        let (mut session, hello) = Session::start("browser-1", 1);
        assert!(!hello.contains(r#""work""#), "{hello}");
        let challenge = to_json(&MasterMessage::Challenge {
            seed: "ab".repeat(16),
            bits: 10,
        });
        let Ok(Reaction::Reply(answer)) = session.on_text(&challenge) else {
            panic!("a challenge before the welcome is answered");
        };
        let Ok(WorkerMessage::Hello {
            worker_id,
            work,
            slots,
            ..
        }) = WorkerMessage::from_json(&answer)
        else {
            panic!("the answer is a hello: {answer}");
        };
        assert_eq!((worker_id.as_str(), slots), ("browser-1", 1));
        let work = work.unwrap();
        assert!(grid_protocol::work::is_solution(
            &"ab".repeat(16),
            "browser-1",
            10,
            work
        ));
        // A second challenge is a protocol error, not an endless loop of work.
        assert!(matches!(
            session.on_text(&challenge),
            Err(SessionError::Malformed(_))
        ));
    }

    fn welcomed() -> Session {
        let (mut session, _) = Session::start("browser-1", 1);
        let welcome = to_json(&MasterMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_seconds: 15,
            max_message_bytes: 4096,
            masters: Vec::new(),
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
                work: None,
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
        // One slot: nothing else starts until the running chunk is finished.
        assert_eq!(session.next_assignment(), None);
        assert!(session.finish(5));
        assert_eq!(session.next_assignment().map(|a| a.lease), Some(7));
        assert!(session.finish(7));
        assert_eq!(session.next_assignment(), None);
    }

    #[test]
    fn a_revoke_can_arrive_while_a_chunk_runs() {
        let mut session = welcomed();
        session.on_text(&assign(5)).unwrap();
        session.on_text(&assign(6)).unwrap();
        assert_eq!(session.next_assignment().map(|a| a.lease), Some(5));
        assert_eq!(session.running(), Some(5));
        // The master reissuing the running lease to us again is ignored too.
        assert_eq!(session.on_text(&assign(5)), Ok(Reaction::Nothing));
        let revoke = to_json(&MasterMessage::Revoke { leases: vec![5] });
        assert_eq!(session.on_text(&revoke), Ok(Reaction::RunningRevoked));
        assert_eq!(session.running(), None);
        // Its late result is not sent, and the slot is free for the next chunk.
        assert!(!session.finish(5));
        assert_eq!(session.give_back(5), None);
        assert_eq!(session.next_assignment().map(|a| a.lease), Some(6));
        // Revoking a queued lease while another runs leaves the running one alone.
        session.on_text(&assign(7)).unwrap();
        let revoke = to_json(&MasterMessage::Revoke { leases: vec![7] });
        assert_eq!(session.on_text(&revoke), Ok(Reaction::Nothing));
        assert_eq!(session.running(), Some(6));
        assert_eq!(session.queued(), 0);
    }

    #[test]
    fn a_chunk_this_worker_cannot_run_is_given_back() {
        let mut session = welcomed();
        session.on_text(&assign(8)).unwrap();
        let lease = session.next_assignment().unwrap().lease;
        let release = session.give_back(lease).unwrap();
        assert_eq!(
            WorkerMessage::from_json(&release).unwrap(),
            WorkerMessage::Release { leases: vec![8] }
        );
        assert_eq!(session.running(), None);
        assert_eq!(session.give_back(lease), None, "given back once");
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

        // The running chunk goes back too: its result will not be sent.
        session.on_text(&assign(3)).unwrap();
        session.on_text(&assign(4)).unwrap();
        assert_eq!(session.next_assignment().map(|a| a.lease), Some(3));
        let release = session.release_all().unwrap();
        assert_eq!(
            WorkerMessage::from_json(&release).unwrap(),
            WorkerMessage::Release { leases: vec![3, 4] }
        );
        assert!(!session.finish(3));
        assert_eq!(session.release_all(), None);
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
            masters: Vec::new(),
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
            masters: Vec::new(),
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
            masters: Vec::new(),
        });
        assert!(session.on_text(&newer).unwrap_err().is_fatal());
    }
}
