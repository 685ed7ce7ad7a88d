//! Volunteers driven by hand (protocol peers computing with the real kernels) and a reader of
//! server-sent events, for the dashboard tests.

use std::time::Duration;

use grid_protocol::{Outcome, WorkerMessage};
use serde_json::{Value, json};

use super::{InProcessServer, Peer};

/// A volunteer computing `kernel` with the real kernels, `delay` before each result; a
/// `liar` answers `{"count": 0}` for inputs starting at 0 instead.
pub async fn volunteer(
    ws: String,
    id: &'static str,
    kernel: &'static str,
    delay: Duration,
    liar: bool,
) {
    let mut peer = Peer::join(&ws, id, 2).await;
    loop {
        let (lease, input) = peer.next_assignment().await;
        tokio::time::sleep(delay).await;
        let output = if liar && input["start"] == 0 {
            json!({"count": 0})
        } else {
            grid_kernels::run(kernel, &input).unwrap()
        };
        peer.send(&WorkerMessage::Result {
            lease,
            outcome: Outcome::Ok(output),
        })
        .await;
    }
}

/// Volunteers that stop when dropped.
pub struct Volunteers(Vec<tokio::task::JoinHandle<()>>);

impl Volunteers {
    /// Volunteers (identity, liar?) on `server`, 30 ms per chunk.
    pub fn start(
        server: &InProcessServer,
        who: &[(&'static str, bool)],
        kernel: &'static str,
    ) -> Self {
        Self::start_with_delay(server, who, kernel, Duration::from_millis(30))
    }

    /// Volunteers taking `delay` per chunk.
    pub fn start_with_delay(
        server: &InProcessServer,
        who: &[(&'static str, bool)],
        kernel: &'static str,
        delay: Duration,
    ) -> Self {
        Volunteers(
            who.iter()
                .map(|&(id, liar)| tokio::spawn(volunteer(server.ws(), id, kernel, delay, liar)))
                .collect(),
        )
    }
}

impl Drop for Volunteers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A server-sent events reader.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    pub async fn open(url: &str, token: Option<&str>) -> (u16, Option<Events>) {
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            return (status, None);
        }
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let events = Events {
            response,
            buffer: String::new(),
        };
        (status, Some(events))
    }

    /// The next event `(name, data)`; None when the stream ended. Bounded by `within`.
    pub async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no event in time")
                .ok()??;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }
}
