//! Tenant quotas (open chunks, module bytes, submissions per minute), module deletion and
//! retention, against a real master on both backends (issue 19 §5, review M1 and M6).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::volunteers::Volunteers;
use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, modules};
use grid_server::limits::Limits;
use grid_server::retention::{self, RetentionPolicy};
use grid_server::store::RetentionStep;
use serde_json::{Value, json};

/// A new submitter token's client.
async fn tenant(server: &InProcessServer) -> Api {
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let (status, body) = admin.post("/api/v1/tokens", &json!({})).await;
    assert_eq!(status, 201, "{body}");
    Api::new(&server.http(), body["token"].as_str().unwrap())
}

/// `POST` a JSON body; the status, the `Retry-After` header and the body.
async fn post_raw(api: &Api, path: &str, body: &Value) -> (u16, Option<u64>, Value) {
    let response = api
        .client
        .post(format!("{}{path}", api.base))
        .bearer_auth(&api.token)
        .json(body)
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// Upload a module; the status, the `Retry-After` header and the body.
async fn upload_raw(api: &Api, bytes: Vec<u8>) -> (u16, Option<u64>, Value) {
    let response = api
        .client
        .post(format!("{}/api/v1/modules", api.base))
        .bearer_auth(&api.token)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn answer(response: reqwest::Response) -> (u16, Option<u64>, Value) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().parse::<u64>().unwrap());
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn echo_job(chunks: usize) -> Value {
    json!({"kernel": "echo", "inputs": (0..chunks).collect::<Vec<_>>()})
}

/// The ids of the jobs `api` sees.
async fn job_ids(api: &Api) -> Vec<i64> {
    let (status, body) = api.get("/api/v1/jobs").await;
    assert_eq!(status, 200, "{body}");
    body["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|job| job["id"].as_i64().unwrap())
        .collect()
}

fn assert_quota(status: u16, body: &Value, expected: u16, quota: &str, parts: &[&str]) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(quota), "{message}");
    for part in parts {
        assert!(message.contains(part), "{message} lacks {part}");
    }
}

async fn open_chunk_quota(backend: Backend) {
    let server = InProcessServer::start_with(
        backend,
        Limits {
            max_open_chunks: 10,
            ..Limits::default()
        },
    )
    .await;
    let alice = tenant(&server).await;
    let bob = tenant(&server).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let first = alice.submit(echo_job(6)).await;

    // 6 open + 5 > 10: 429 with Retry-After, naming the quota, the limit and the use.
    let (status, retry, body) = post_raw(&alice, "/api/v1/jobs", &echo_job(5)).await;
    assert_quota(
        status,
        &body,
        429,
        "max_open_chunks",
        &["limit 10", "in use 6"],
    );
    assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{retry:?}");
    // Nothing stored: the job list and the chunks are unchanged.
    assert_eq!(job_ids(&alice).await, vec![first]);
    assert_eq!(server.store.count("SELECT count(*) FROM chunks").await, 6);

    // Exactly at the limit passes; one more chunk does not.
    let second = alice.submit(echo_job(4)).await;
    let (status, retry, body) = post_raw(&alice, "/api/v1/jobs", &echo_job(1)).await;
    assert_quota(status, &body, 429, "max_open_chunks", &["in use 10"]);
    assert!(retry.is_some());
    // A job bigger than the whole quota can never pass: 413, no Retry-After.
    let (status, retry, body) = post_raw(&alice, "/api/v1/jobs", &echo_job(11)).await;
    assert_quota(status, &body, 413, "max_open_chunks", &["alone"]);
    assert_eq!(retry, None);
    assert_eq!(job_ids(&alice).await, vec![second, first]);

    // Another tenant has its own quota; the admin has none.
    bob.submit(echo_job(10)).await;
    admin.submit(echo_job(25)).await;

    // Cancelling frees the job's undecided chunks.
    let (status, body) = alice.delete(&format!("/api/v1/jobs/{first}")).await;
    assert_eq!(status, 200, "{body}");
    alice.submit(echo_job(6)).await;
    server.stop().await;
}

async fn concurrent_submissions_cannot_jointly_pass(backend: Backend) {
    let server = InProcessServer::start_with(
        backend,
        Limits {
            max_open_chunks: 10,
            ..Limits::default()
        },
    )
    .await;
    let alice = std::sync::Arc::new(tenant(&server).await);
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let alice = alice.clone();
            tokio::spawn(async move { post_raw(&alice, "/api/v1/jobs", &echo_job(3)).await })
        })
        .collect();
    let mut accepted = 0;
    for attempt in attempts {
        let (status, _, body) = attempt.await.unwrap();
        match status {
            201 => accepted += 1,
            429 => assert_eq!(body["error"]["code"], "quota_exceeded", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    // 3 jobs of 3 fit in 10; a fourth would not, however the requests interleave.
    assert_eq!(accepted, 3);
    assert_eq!(server.store.count("SELECT count(*) FROM chunks").await, 9);
    server.stop().await;
}

async fn submission_rate_frees_after_the_window(backend: Backend) {
    let server = InProcessServer::start_with(
        backend,
        Limits {
            max_submissions_per_minute: 3,
            submission_window: Duration::from_secs(6),
            ..Limits::default()
        },
    )
    .await;
    let alice = tenant(&server).await;
    let bob = tenant(&server).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    for _ in 0..3 {
        alice.submit(echo_job(1)).await;
    }
    let (status, retry, body) = post_raw(&alice, "/api/v1/jobs", &echo_job(1)).await;
    assert_quota(
        status,
        &body,
        429,
        "max_submissions_per_minute",
        &["limit 3"],
    );
    // One slot frees every 6 s / 3: the real wait, rounded up to whole seconds.
    assert!(
        retry.is_some_and(|s| (1..=2).contains(&s)),
        "{retry:?} {body}"
    );
    // Module uploads count too.
    let (status, _, body) = upload_raw(&alice, modules::echo()).await;
    assert_quota(status, &body, 429, "max_submissions_per_minute", &[]);
    assert_eq!(job_ids(&alice).await.len(), 3);
    assert_eq!(server.store.count("SELECT count(*) FROM modules").await, 0);

    // Others are not affected, the admin is never counted.
    bob.submit(echo_job(1)).await;
    for _ in 0..5 {
        admin.submit(echo_job(1)).await;
    }

    // Once the slot has freed, the next passes (and only one).
    tokio::time::sleep(Duration::from_secs(retry.unwrap())).await;
    alice.submit(echo_job(1)).await;
    let (status, _, body) = post_raw(&alice, "/api/v1/jobs", &echo_job(1)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(job_ids(&alice).await.len(), 4);
    server.stop().await;
}

async fn module_quota_and_deletion(backend: Backend) {
    let echo = modules::echo();
    let trap = modules::trap();
    let limit = (echo.len() + trap.len() - 1) as u64;
    let server = InProcessServer::start_with(
        backend,
        Limits {
            max_module_bytes_per_token: limit,
            ..Limits::default()
        },
    )
    .await;
    let alice = tenant(&server).await;
    let bob = tenant(&server).await;
    let carol = tenant(&server).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);

    let echo_id = alice.upload_module(echo.clone()).await;
    // Uploading what she holds already costs nothing more.
    assert_eq!(alice.upload_module(echo.clone()).await, echo_id);
    let (status, retry, body) = upload_raw(&alice, trap.clone()).await;
    assert_quota(
        status,
        &body,
        429,
        "max_module_bytes",
        &[
            &format!("limit {limit} bytes"),
            &format!("in use {} bytes", echo.len()),
        ],
    );
    assert!(retry.is_some());
    assert_eq!(server.store.count("SELECT count(*) FROM modules").await, 1);
    // A module bigger than the whole quota: 413.
    let big = wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 1)
             (data (i32.const 2048) "{}")
             (func (export "grid_alloc") (param $len i32) (result i32) i32.const 1024)
             (func (export "grid_run") (param $ptr i32) (param $len i32) (result i64)
               i64.const 0))"#,
        "x".repeat(limit as usize)
    ))
    .unwrap();
    let (status, retry, body) = upload_raw(&bob, big).await;
    assert_quota(status, &body, 413, "max_module_bytes", &[]);
    assert_eq!(retry, None);

    // Bob holds the same bytes too, and runs a job on them.
    assert_eq!(bob.upload_module(echo.clone()).await, echo_id);
    let bobs_job = bob
        .submit(json!({"module": echo_id, "inputs": [1, 2]}))
        .await;

    // Carol never uploaded it: 404, as for a module that does not exist.
    let (status, body) = carol.delete(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = carol.delete("/api/v1/modules/sha256:nothing").await;
    assert_eq!(status, 404);

    // Alice drops her hold: Bob's job is untouched, the bytes stay, her quota is freed.
    let (status, body) = alice.delete(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = alice.delete(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 404, "she holds it no longer");
    let (status, _) = alice.get(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 200);
    let trap_id = alice.upload_module(trap.clone()).await;

    // Bob's own unfinished job runs it: 409 module_in_use; cancelled, it may go.
    let (status, body) = bob.delete(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "module_in_use");
    let (status, _) = bob.delete(&format!("/api/v1/jobs/{bobs_job}")).await;
    assert_eq!(status, 200);
    // Downloaded once, so it sits in the master's module cache.
    let (status, _) = bob.get(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 200);
    let (status, body) = bob.delete(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 204, "{body}");
    // Gone from the database and from the cache; new jobs on it are refused.
    let (status, _) = bob.get(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 404);
    let (status, body) = bob
        .post("/api/v1/jobs", &json!({"module": echo_id, "inputs": [1]}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_module");

    // Someone else's unfinished job on a module whose last hold would go: 409 as well.
    carol
        .submit(json!({"module": trap_id, "inputs": [1]}))
        .await;
    let (status, body) = alice.delete(&format!("/api/v1/modules/{trap_id}")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "module_in_use");
    // The admin may delete any module, under the same rule.
    let (status, _) = admin.delete(&format!("/api/v1/modules/{trap_id}")).await;
    assert_eq!(status, 409);
    assert_eq!(
        server
            .store
            .count("SELECT count(*) FROM module_uploads")
            .await,
        1
    );
    server.stop().await;
}

/// Credit per volunteer, straight from the database (no cache): (results, credit_ms).
async fn credits(server: &InProcessServer) -> Vec<(String, i64, f64)> {
    let credits = server.store.shared().credits().await.unwrap();
    credits
        .into_iter()
        .map(|credit| (credit.worker_id, credit.results, credit.credit_ms))
        .collect()
}

async fn results_of(api: &Api, job: i64) -> (u16, Value) {
    api.get(&format!("/api/v1/jobs/{job}/results")).await
}

/// Make a job look finished `days` ago.
async fn age(server: &InProcessServer, backend: Backend, job: i64, days: i64) {
    let sql = match backend {
        Backend::Postgres => {
            format!("UPDATE jobs SET finished_at = now() - interval '{days} days' WHERE id = {job}")
        }
        Backend::Sqlite => {
            let at = chrono::Utc::now() - chrono::Duration::days(days);
            format!(
                "UPDATE jobs SET finished_at = '{}' WHERE id = {job}",
                at.to_rfc3339()
            )
        }
    };
    server.store.execute(&sql).await;
}

async fn retention_deletes_old_results_only(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let alice = tenant(&server).await;
    let volunteers = Volunteers::start(&server, &[("v-one", false), ("v-two", false)], "echo");
    let old = alice.submit(echo_job(6)).await;
    let recent = alice.submit(echo_job(3)).await;
    alice.outputs(old, 2).await;
    alice.outputs(recent, 2).await;
    // Reading credit settles the finished jobs so far.
    let before = credits(&server).await;
    assert_eq!(before.iter().map(|c| c.1).sum::<i64>(), 18, "{before:?}");
    // A third job finishes after that: its credit is not settled yet when it expires.
    let unsettled = alice.submit(echo_job(4)).await;
    alice.outputs(unsettled, 2).await;
    drop(volunteers);
    assert_eq!(
        server
            .store
            .count(&format!(
                "SELECT count(*) FROM credited_jobs WHERE job_id = {unsettled}"
            ))
            .await,
        0
    );
    let old_view = alice.get(&format!("/api/v1/jobs/{old}")).await.1;
    age(&server, backend, old, 30).await;
    age(&server, backend, unsettled, 30).await;
    age(&server, backend, recent, 2).await;

    let store = server.store.shared();
    let policy = RetentionPolicy {
        batch_rows: 2,
        ..RetentionPolicy::days(7)
    };

    // The first step marks the job: from then on spot-checks never pick its chunks.
    server
        .store
        .execute(&format!(
            "UPDATE chunks SET master_checked = 'agreed', ringer_key = 0.5 WHERE job_id IN ({old}, {recent})"
        ))
        .await;
    let pool = store.ringer_pool(1000).await.unwrap();
    assert!(pool.iter().any(|chunk| chunk.job_id == old));
    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    assert_eq!(
        store.retention_step(old, cutoff, 2).await.unwrap(),
        RetentionStep::Marked
    );
    let pool = store.ringer_pool(1000).await.unwrap();
    assert!(!pool.iter().any(|chunk| chunk.job_id == old), "{pool:?}");
    assert!(pool.iter().any(|chunk| chunk.job_id == recent));
    // The recent job is not due.
    assert_eq!(
        store.retention_step(recent, cutoff, 2).await.unwrap(),
        RetentionStep::Skipped
    );

    let report = retention::pass(&*store, &policy).await.unwrap();
    assert_eq!(report.jobs_purged, 2, "{report:?}");
    // 6 + 4 chunks, each with two replicas (spot-check ringers may add a few).
    assert!(report.rows_deleted >= 30, "{report:?}");
    for job in [old, unsettled] {
        for table in ["replicas", "chunks"] {
            let left = server
                .store
                .count(&format!(
                    "SELECT count(*) FROM {table} WHERE job_id = {job}"
                ))
                .await;
            assert_eq!(left, 0, "{table} of job {job}");
        }
        let (status, body) = results_of(&alice, job).await;
        assert_eq!(status, 410, "{body}");
        assert_eq!(body["error"]["code"], "results_expired");
    }
    // The job view remains, counters and all, and says when its results went.
    let (status, view) = alice.get(&format!("/api/v1/jobs/{old}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "done");
    assert_eq!(view["chunks"], old_view["chunks"]);
    assert_eq!(view["replicas"], old_view["replicas"]);
    assert!(view["results_deleted_at"].is_string(), "{view}");
    assert!(old_view["results_deleted_at"].is_null(), "{old_view}");
    // The recent job is untouched.
    assert_eq!(alice.results(recent).await.len(), 3);
    let (_, view) = alice.get(&format!("/api/v1/jobs/{recent}")).await;
    assert!(view["results_deleted_at"].is_null(), "{view}");
    assert_eq!(
        server
            .store
            .count(&format!(
                "SELECT count(*) FROM replicas WHERE job_id = {recent} AND NOT ringer"
            ))
            .await,
        6
    );

    // Credit did not drop, and the unsettled job's was settled before its replicas went.
    let after = credits(&server).await;
    assert_eq!(after.iter().map(|c| c.1).sum::<i64>(), 18 + 8, "{after:?}");
    for (worker, results, credit_ms) in &before {
        let (_, results_after, credit_after) = after
            .iter()
            .find(|c| &c.0 == worker)
            .unwrap_or_else(|| panic!("{worker} lost its credit: {after:?}"));
        assert!(results_after > results, "{worker}");
        assert!(
            credit_after >= credit_ms,
            "{worker}: {credit_after} < {credit_ms}"
        );
    }
    // A second pass finds nothing to do.
    let again = retention::pass(&*store, &policy).await.unwrap();
    assert_eq!(again, retention::PassReport::default());
    server.stop().await;
}

async fn retention_runs_in_the_background(backend: Backend) {
    let server = InProcessServer::start_with_options(
        backend,
        grid_server::ServeOptions {
            retention: Some(RetentionPolicy {
                interval: Duration::from_millis(200),
                ..RetentionPolicy::days(1)
            }),
            ..grid_server::ServeOptions::default()
        },
    )
    .await;
    let alice = tenant(&server).await;
    let job = alice.submit(echo_job(2)).await;
    let (status, _) = alice.delete(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(status, 200);
    age(&server, backend, job, 3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = results_of(&alice, job).await;
        if status == 410 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retention task did not delete the cancelled job's results"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server
        .store
        .count(&format!("SELECT count(*) FROM chunks WHERE job_id = {job}"))
        .await
        > 0
    {
        assert!(tokio::time::Instant::now() < deadline, "chunks left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

on_both_backends!(
    open_chunk_quota,
    concurrent_submissions_cannot_jointly_pass,
    submission_rate_frees_after_the_window,
    module_quota_and_deletion,
    retention_deletes_old_results_only,
    retention_runs_in_the_background,
);
