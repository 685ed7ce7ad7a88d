//! Helpers for the load generator's tests: a master in the test process on the embedded
//! SQLite store (no PostgreSQL needed) and the jobs it runs, through `grid-test-support`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use grid_test_support::{ADMIN_TOKEN, Api, Backend, InProcessServer};
use serde_json::{Value, json};

/// The master running inside the test process, bound to a free loopback port.
pub struct Master {
    server: InProcessServer,
    api: Api,
}

impl Master {
    /// Bind first, then serve: the address is usable as soon as this returns.
    pub async fn start() -> Master {
        let server = InProcessServer::start(Backend::Sqlite).await;
        let api = Api::new(&server.http(), ADMIN_TOKEN);
        Master { server, api }
    }

    pub fn url(&self) -> String {
        self.server.http()
    }

    /// Submit a job as the admin; returns its id.
    pub async fn submit(&self, kernel: &str, inputs: &[Value], redundancy: u32) -> i64 {
        self.api
            .submit(json!({"kernel": kernel, "inputs": inputs, "redundancy": redundancy}))
            .await
    }

    pub async fn job(&self, id: i64) -> Value {
        self.api.get(&format!("/api/v1/jobs/{id}")).await.1
    }

    /// Resolves once the job is done, failed or cancelled (polling; bounded by the caller).
    pub async fn finished(&self, id: i64) -> Value {
        // The callers bound the wait with their own timeouts.
        self.api
            .wait_finished(id, Duration::from_secs(24 * 3600))
            .await
    }

    /// The results lines, in index order.
    pub async fn results(&self, id: i64) -> Vec<Value> {
        self.api.results(id).await
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}
