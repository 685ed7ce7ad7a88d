//! The documented limits on what clients and workers may send. The README lists them.

/// Limits enforced by the REST API and the WebSocket sessions.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest REST request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024 * 1024,
            max_inputs_per_job: 1_000_000,
            max_input_bytes: 64 * 1024,
            max_output_bytes: 1024 * 1024,
            max_ws_message_bytes: 1024 * 1024 + 4096,
            ws_messages_per_second: 2_000,
            ws_message_burst: 4_000,
            heartbeat_seconds: 15,
            max_name_bytes: 200,
            max_module_bytes: grid_task_abi::limits::DEFAULT_MAX_MODULE_BYTES,
        }
    }
}
