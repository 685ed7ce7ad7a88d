//! Retention on both backends: the results of a job finished longer ago than the retention
//! (its finish backdated in the test database) are deleted in small batches, its view keeps its
//! counters and says so, its results answer 410, and younger jobs and the volunteers' credit
//! are untouched.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer, TestStore};
use futures_util::StreamExt;
use grid_protocol::{MasterMessage, Outcome, WorkerMessage};
use grid_server::ServeOptions;
use grid_server::retention::RetentionPolicy;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(results_of_old_jobs_expire_and_answer_410);

/// An honest echo worker until aborted.
fn spawn_peer(ws: String, id: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut peer = Peer::join(&ws, id, 4).await;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), peer.socket.next()).await;
            let text = match frame {
                Err(_) => {
                    peer.send(&WorkerMessage::Heartbeat).await;
                    continue;
                }
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return,
                Ok(Some(Ok(_))) => continue,
            };
            if let Ok(MasterMessage::Assign { lease, input, .. }) = MasterMessage::from_json(&text)
            {
                peer.send(&WorkerMessage::Result {
                    lease,
                    outcome: Outcome::Ok(input),
                })
                .await;
            }
        }
    })
}

/// Pretend the job finished `days` days ago.
async fn backdate(store: &TestStore, job: i64, days: i64) {
    let finished = chrono::Utc::now() - chrono::Duration::days(days);
    let sql = "UPDATE jobs SET finished_at = $1 WHERE id = $2";
    match store {
        TestStore::Postgres(store) => {
            sqlx::query(sql)
                .bind(finished)
                .bind(job)
                .execute(store.pool())
                .await
                .unwrap();
        }
        TestStore::Sqlite(store) => {
            sqlx::query(sql)
                .bind(finished)
                .bind(job)
                .execute(store.pool())
                .await
                .unwrap();
        }
    }
}

async fn rows_of(store: &TestStore, job: i64) -> i64 {
    store
        .count(&format!("SELECT count(*) FROM chunks WHERE job_id = {job}"))
        .await
        + store
            .count(&format!(
                "SELECT count(*) FROM replicas WHERE job_id = {job}"
            ))
            .await
}

async fn credit(api: &Api) -> Value {
    let (status, body) = api.get("/api/v1/volunteers").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn results_of_old_jobs_expire_and_answer_410(backend: Backend) {
    let options = ServeOptions {
        retention: Some(RetentionPolicy {
            max_age: Duration::from_secs(86_400),
            interval: Duration::from_millis(100),
            // Small batches: the job's rows go in many steps.
            batch_rows: 3,
        }),
        ..ServeOptions::default()
    };
    let server = InProcessServer::start_with_options(backend, options).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let peers: Vec<_> = ["keep-1", "keep-2", "keep-3"]
        .into_iter()
        .map(|id| spawn_peer(server.ws(), id))
        .collect();
    let inputs: Vec<Value> = (0..12).map(|i| json!({"old": i})).collect();
    let old = admin
        .submit(json!({"kernel": "echo", "inputs": inputs, "redundancy": 2}))
        .await;
    let young = admin
        .submit(json!({"kernel": "echo", "inputs": [1, 2, 3], "redundancy": 2}))
        .await;
    assert_eq!(admin.outputs(old, 2).await.len(), 12);
    assert_eq!(admin.outputs(young, 2).await.len(), 3);
    for peer in peers {
        peer.abort();
    }
    let before = admin.get(&format!("/api/v1/jobs/{old}")).await.1;
    assert!(before.get("results_expired_at").is_none(), "{before}");
    let credit_before = credit(&admin).await;

    // Jobs finished within the retention keep everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rows_of(&server.store, old).await >= 36);

    backdate(&server.store, old, 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows_of(&server.store, old).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the old job's rows are not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = admin.get(&format!("/api/v1/jobs/{old}")).await.1;
    assert!(after["results_expired_at"].is_string(), "{after}");
    assert_eq!(after["state"], "done");
    assert_eq!(after["chunks"], before["chunks"], "chunk counters kept");
    assert_eq!(
        after["replicas"], before["replicas"],
        "replica counters kept"
    );

    let response = admin
        .client
        .get(format!("{}/api/v1/jobs/{old}/results", admin.base))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 410);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "results_expired", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retention"),
        "{body}"
    );

    // The young job and the volunteers' credit are untouched.
    assert_eq!(
        admin.outputs(young, 2).await,
        vec![json!(1), json!(2), json!(3)]
    );
    assert!(rows_of(&server.store, young).await >= 9);
    assert_eq!(credit(&admin).await, credit_before);
    server.stop().await;
}
