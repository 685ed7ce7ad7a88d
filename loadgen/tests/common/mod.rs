//! Helpers for the load generator's tests: a master in the test process on the embedded
//! SQLite store (no PostgreSQL needed), and a small REST client for jobs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grid_server::store::sqlite::SqliteStore;
use grid_server::{ServeOptions, serve};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "loadgen-test-admin-token";

/// The master running inside the test process, bound to a free loopback port.
pub struct Master {
    pub addr: SocketAddr,
    _data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

impl Master {
    /// Bind first, then serve: the address is usable as soon as this returns.
    pub async fn start() -> Master {
        let data = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(data.path()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            admin_token: Some(ADMIN_TOKEN.into()),
            ..ServeOptions::default()
        };
        let task = tokio::spawn(async move {
            serve(listener, Arc::new(store), options, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Master {
            addr,
            _data: data,
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Submit a job as the admin; returns its id.
    pub async fn submit(&self, kernel: &str, inputs: &[Value], redundancy: u32) -> i64 {
        let response = self
            .http
            .post(format!("{}/api/v1/jobs", self.url()))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"kernel": kernel, "inputs": inputs, "redundancy": redundancy}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        let job: Value = response.json().await.unwrap();
        job["id"].as_i64().unwrap()
    }

    pub async fn job(&self, id: i64) -> Value {
        self.http
            .get(format!("{}/api/v1/jobs/{id}", self.url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Resolves once the job is done, failed or cancelled (polling; bounded by the caller).
    pub async fn finished(&self, id: i64) -> Value {
        loop {
            let job = self.job(id).await;
            if matches!(job["state"].as_str(), Some("done" | "failed" | "cancelled")) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The results lines, in index order.
    pub async fn results(&self, id: i64) -> Vec<Value> {
        let text = self
            .http
            .get(format!("{}/api/v1/jobs/{id}/results", self.url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}
