//! One file per subcommand; each exposes `run(client, args)` and prints its own output.
//! Standard output carries only the answer (an id, a token, results, a summary) so scripts
//! can capture it; progress and errors go to standard error.

pub mod cancel;
pub mod jobs;
pub mod results;
pub mod run_local;
pub mod status;
pub mod submit;
pub mod token;
pub mod upload;

use std::io::Write;

use crate::error::{Error, Result};

/// Print `text` and a newline to standard output. A closed pipe (`grid jobs | head -1`) is
/// not an error.
pub(crate) fn print_line(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::file("-", error))
        }
        _ => Ok(()),
    }
}

/// A JSON id as a user types it: strings without quotes, numbers as they are.
pub(crate) fn id_text(id: &serde_json::Value) -> String {
    match id {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
