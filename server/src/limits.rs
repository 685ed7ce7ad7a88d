//! The documented limits on what clients and workers may send. The README lists them.

use std::time::Duration;

/// Body limit of every REST route that names no larger one, in bytes (413 beyond).
pub const DEFAULT_BODY_BYTES: usize = 64 * 1024;
/// Body limit of `PUT /api/v1/volunteers/me` (a display name), in bytes.
pub const VOLUNTEER_BODY_BYTES: usize = 4 * 1024;
/// Limit of the `job` part (the job's fields as JSON) of a multipart job submission, in bytes.
pub const JOB_PART_BYTES: usize = DEFAULT_BODY_BYTES;

/// Most rows one page of a results download reads from the database.
pub const RESULTS_PAGE_ROWS: i64 = 2_000;
/// Most bytes of outputs and errors one page of a results download reads (a page always holds
/// at least one row, so a single result of up to `max_output_bytes` still goes out).
pub const RESULTS_PAGE_BYTES: i64 = 8 * 1024 * 1024;
/// Longest error text sent in a `chunk_failed` event (characters; the whole text is in the
/// results).
pub const EVENT_ERROR_CHARS: i64 = 256;

/// Limits enforced by the REST API and the WebSocket sessions.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON job submission body (`POST /api/v1/jobs`), in bytes (413 beyond). Other
    /// routes take [`DEFAULT_BODY_BYTES`] (64 KiB), `PUT /api/v1/volunteers/me` takes
    /// [`VOLUNTEER_BODY_BYTES`] (4 KiB), module uploads take `max_module_bytes`. The inputs are
    /// streamed out of the body one at a time (see [`crate::inputs`]), so a submission costs
    /// its body and the canonical texts of its inputs, never a tree of every value in it.
    pub max_body_bytes: usize,
    /// Largest dataset file of a multipart job submission, in bytes (413 beyond). The file is
    /// spooled to a temporary file and read a record batch (or a row) at a time.
    pub max_dataset_bytes: usize,
    /// Most chunk inputs in one job (413 beyond).
    pub max_inputs_per_job: usize,
    /// Largest canonical JSON of one chunk input, in bytes (413 beyond).
    pub max_input_bytes: usize,
    /// Largest canonical outcome of one replica, in bytes (the worker gets an error and a close).
    pub max_output_bytes: usize,
    /// Largest WebSocket message from a worker, in bytes.
    pub max_ws_message_bytes: usize,
    /// Sustained messages per second one WebSocket session may send.
    pub ws_messages_per_second: u32,
    /// Burst of messages above the sustained rate.
    pub ws_message_burst: u32,
    /// Heartbeat interval announced to workers; three silent intervals end a session.
    pub heartbeat_seconds: u32,
    /// Longest job name, in bytes.
    pub max_name_bytes: usize,
    /// Largest uploaded task module, in bytes (413 beyond).
    pub max_module_bytes: usize,
    /// How long an HTTP/1 client may take to send a request's headers, from the moment the
    /// connection opens or its previous response ends (so an idle keep-alive connection is
    /// closed after this long too).
    pub header_read_timeout: Duration,
    /// How long a REST request may take before it answers 503 `timeout` (streaming routes —
    /// server-sent events, results downloads, module uploads, `/ws` — are exempt).
    pub request_timeout: Duration,
    /// Open TCP connections at most (WebSocket sessions included); beyond it a new connection
    /// is accepted and closed at once.
    pub max_connections: usize,
    /// Open TCP connections at most from one address outside the trusted networks.
    pub max_connections_per_ip: usize,
    /// Worker sessions at most (429 `too_many_sessions` beyond).
    pub max_ws_sessions: usize,
    /// Worker sessions at most from one network (see [`crate::network`]) outside the trusted
    /// networks (429 `too_many_sessions` beyond).
    pub max_ws_sessions_per_network: usize,
    /// Results downloads streaming at once (503 `too_many_downloads` beyond). Each holds at
    /// most one page ([`RESULTS_PAGE_ROWS`] rows, [`RESULTS_PAGE_BYTES`] of text) in memory.
    pub max_downloads: usize,
    /// Server-sent event streams open at once (503 `too_many_event_streams` beyond).
    pub max_event_streams: usize,
    /// Server-sent event streams open at once from one network outside the trusted networks
    /// (429 `too_many_event_streams` beyond).
    pub max_event_streams_per_network: usize,
    /// Messages queued for one session's socket at most; a session whose queue is full does
    /// not read its messages and is closed (`slow_reader`).
    pub ws_outbox_messages: usize,
    /// How long writing one frame to a worker may take before the session is closed.
    pub ws_write_timeout: Duration,
    /// `rejected` answers (results for leases the session does not hold) one session may earn
    /// before it is closed (`too_many_refusals`).
    pub ws_max_refusals: u32,
    /// Leading zero bits of the proof of work asked of each new worker session outside the
    /// trusted networks before its welcome (`--hello-work-bits`; 0: none). See
    /// [`grid_protocol::work`].
    pub hello_work_bits: u32,
    /// Open chunks (not yet decided, over its queued and running jobs) one submitter token may
    /// hold, the job being submitted included (`--max-open-chunks`; 0: no limit). See
    /// [`crate::quota`].
    pub max_open_chunks: u64,
    /// Bytes of modules one submitter token may keep stored (`--max-module-bytes-per-token`;
    /// 0: no limit).
    pub max_module_bytes_per_token: u64,
    /// Job submissions and module uploads one submitter token may send per
    /// [`Self::submission_window`] (`--max-submissions-per-minute`; 0: no limit).
    pub max_submissions_per_minute: u32,
    /// The window of `max_submissions_per_minute`: a minute (shorter only in tests).
    pub submission_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024 * 1024,
            max_dataset_bytes: 256 * 1024 * 1024,
            max_inputs_per_job: 1_000_000,
            max_input_bytes: 64 * 1024,
            max_output_bytes: 1024 * 1024,
            max_ws_message_bytes: 1024 * 1024 + 4096,
            ws_messages_per_second: 2_000,
            ws_message_burst: 4_000,
            heartbeat_seconds: 15,
            max_name_bytes: 200,
            max_module_bytes: grid_task_abi::limits::DEFAULT_MAX_MODULE_BYTES,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 20_000,
            max_connections_per_ip: 64,
            max_ws_sessions: 20_000,
            max_ws_sessions_per_network: 32,
            max_downloads: 8,
            max_event_streams: 256,
            max_event_streams_per_network: 16,
            ws_outbox_messages: 1_024,
            ws_write_timeout: Duration::from_secs(10),
            ws_max_refusals: 64,
            hello_work_bits: 0,
            max_open_chunks: crate::quota::DEFAULT_MAX_OPEN_CHUNKS,
            max_module_bytes_per_token: crate::quota::DEFAULT_MAX_MODULE_BYTES,
            max_submissions_per_minute: crate::quota::DEFAULT_MAX_SUBMISSIONS_PER_MINUTE,
            submission_window: Duration::from_secs(60),
        }
    }
}
