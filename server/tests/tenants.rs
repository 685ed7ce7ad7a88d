//! Tenants (submitter tokens) over real sockets, on both backends: quotas answer 429
//! `quota_exceeded` with `Retry-After`, the admin sets weights and overrides, module deletion
//! follows its rules, and dispatch shares the workers across tenants by weight, so a huge job
//! cannot starve a small one.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::modules::{echo, trap};
use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer};
use futures_util::{SinkExt, StreamExt};
use grid_protocol::{MasterMessage, Outcome, WorkerMessage};
use grid_server::ServeOptions;
use grid_server::quota::QuotaDefaults;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(
    quotas_answer_429_with_retry_after_and_name_the_limit,
    the_admin_sets_shares_and_tenants_read_their_own,
    modules_are_deleted_by_their_owner_once_no_job_needs_them,
    a_small_job_finishes_within_seconds_beside_a_huge_one,
    weights_two_to_one_share_dispatch_two_to_one,
);

/// A new submitter token: its id and a client for it.
async fn tenant(admin: &Api) -> (i64, Api) {
    let (status, body) = admin.post("/api/v1/tokens", &json!({})).await;
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_i64().unwrap(),
        Api::new(&admin.base, body["token"].as_str().unwrap()),
    )
}

/// A request's status, `Retry-After` header and JSON body.
async fn send(request: reqwest::RequestBuilder) -> (u16, Option<u64>, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().parse().unwrap());
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn put_share(api: &Api, token: &str, body: Value) -> (u16, Value) {
    let (status, _, body) = send(
        api.client
            .put(format!("{}/api/v1/tokens/{token}/share", api.base))
            .bearer_auth(&api.token)
            .json(&body),
    )
    .await;
    (status, body)
}

async fn submit_raw(api: &Api, body: &Value) -> (u16, Option<u64>, Value) {
    send(
        api.client
            .post(format!("{}/api/v1/jobs", api.base))
            .bearer_auth(&api.token)
            .json(body),
    )
    .await
}

async fn upload_raw(api: &Api, bytes: Vec<u8>) -> (u16, Option<u64>, Value) {
    send(
        api.client
            .post(format!("{}/api/v1/modules", api.base))
            .bearer_auth(&api.token)
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await
}

fn echo_job(chunks: usize, tag: &str) -> Value {
    let inputs: Vec<Value> = (0..chunks).map(|i| json!({"tag": tag, "i": i})).collect();
    json!({"kernel": "echo", "inputs": inputs, "redundancy": 1})
}

/// A 429 `quota_exceeded` naming `quota` with its limit and use, and a `Retry-After`.
fn assert_quota(
    answer: &(u16, Option<u64>, Value),
    quota: &str,
    limit: i64,
    used: i64,
    requested: i64,
) {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(
        body["error"]["quota"],
        json!({"name": quota, "limit": limit, "used": used, "requested": requested}),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(quota) && message.contains(&limit.to_string()),
        "{message}"
    );
    assert!(
        retry_after.is_some_and(|seconds| seconds >= 1),
        "{answer:?}"
    );
}

async fn quotas_answer_429_with_retry_after_and_name_the_limit(backend: Backend) {
    let options = ServeOptions {
        quotas: QuotaDefaults {
            max_open_chunks: 100,
            max_module_bytes: 0,
            max_submissions_per_minute: 0,
        },
        ..ServeOptions::default()
    };
    let server = InProcessServer::start_with_options(backend, options).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);

    // Open chunks, from the master's default: no worker runs, so nothing gets decided.
    let (_, alice) = tenant(&admin).await;
    let first = alice.submit(echo_job(60, "a")).await;
    let over = submit_raw(&alice, &echo_job(50, "b")).await;
    assert_quota(&over, "max_open_chunks", 100, 60, 50);
    let (status, _, body) = submit_raw(&alice, &echo_job(101, "c")).await;
    assert_eq!(status, 413, "a job bigger than the whole quota: {body}");
    alice.submit(echo_job(40, "d")).await;
    // Cancelled chunks are no longer open: room again.
    let (status, _) = alice.delete(&format!("/api/v1/jobs/{first}")).await;
    assert_eq!(status, 200);
    alice.submit(echo_job(50, "e")).await;
    // Another tenant and the admin have quotas of their own (the admin none at all).
    let (_, bob) = tenant(&admin).await;
    bob.submit(echo_job(100, "f")).await;
    admin.submit(echo_job(500, "g")).await;

    // Submissions per minute, from an override: every request counts, refused or not.
    let (carol_id, carol) = tenant(&admin).await;
    let (status, body) = put_share(
        &admin,
        &carol_id.to_string(),
        json!({"max_submissions_per_minute": 3, "max_open_chunks": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    carol.submit(echo_job(1, "h")).await;
    let (status, _, _) = submit_raw(&carol, &json!({"kernel": "nope", "inputs": [1]})).await;
    assert_eq!(status, 422);
    carol.submit(echo_job(200, "i")).await;
    let over = submit_raw(&carol, &echo_job(1, "j")).await;
    assert_quota(&over, "max_submissions_per_minute", 3, 3, 1);
    let seconds = over.1.unwrap();
    assert!(
        (15..=20).contains(&seconds),
        "one submission per 20 s: {seconds}"
    );
    let over = upload_raw(&carol, echo()).await;
    assert_eq!(over.0, 429, "uploads count too: {:?}", over.2);

    // Module bytes, from an override: a module stored already costs nothing, and deleting
    // one makes room.
    let (dave_id, dave) = tenant(&admin).await;
    let room = echo().len().max(trap().len()) as i64 + 8;
    let (status, body) = put_share(
        &admin,
        &dave_id.to_string(),
        json!({"max_module_bytes": room}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo_id = dave.upload_module(echo()).await;
    let over = upload_raw(&dave, trap()).await;
    assert_quota(
        &over,
        "max_module_bytes",
        room,
        echo().len() as i64,
        trap().len() as i64,
    );
    assert_eq!(dave.upload_module(echo()).await, echo_id);
    let (status, share) = dave.get("/api/v1/tokens/me/share").await;
    assert_eq!(status, 200);
    assert_eq!(share["usage"]["module_bytes"], echo().len(), "{share}");
    let (status, body) = dave.delete(&format!("/api/v1/modules/{echo_id}")).await;
    assert_eq!(status, 204, "{body}");
    dave.upload_module(trap()).await;
    let (_, share) = dave.get("/api/v1/tokens/me/share").await;
    assert_eq!(share["usage"]["module_bytes"], trap().len(), "{share}");
    server.stop().await;
}

async fn the_admin_sets_shares_and_tenants_read_their_own(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let (alice_id, alice) = tenant(&admin).await;
    let (bob_id, _bob) = tenant(&admin).await;
    let alice_path = format!("/api/v1/tokens/{alice_id}/share");

    // Defaults before anything is set.
    let (status, share) = admin.get(&alice_path).await;
    assert_eq!(status, 200, "{share}");
    assert_eq!(share["token_id"], alice_id);
    assert_eq!(share["weight"], 1);
    assert_eq!(share["overrides"]["max_open_chunks"], Value::Null);
    assert_eq!(
        share["limits"]["max_open_chunks"],
        grid_server::quota::DEFAULT_MAX_OPEN_CHUNKS
    );
    assert_eq!(share["usage"], json!({"open_chunks": 0, "module_bytes": 0}));

    let (status, share) = put_share(
        &admin,
        &alice_id.to_string(),
        json!({"weight": 2, "max_open_chunks": 1000, "max_module_bytes": 0}),
    )
    .await;
    assert_eq!(status, 200, "{share}");
    assert_eq!(share["weight"], 2);
    assert_eq!(share["overrides"]["max_open_chunks"], 1000);
    assert_eq!(share["limits"]["max_open_chunks"], 1000);
    assert_eq!(
        share["limits"]["max_module_bytes"],
        Value::Null,
        "0 lifts it"
    );
    alice.submit(echo_job(7, "a")).await;
    let (status, own) = alice.get("/api/v1/tokens/me/share").await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["weight"], 2);
    assert_eq!(own["usage"]["open_chunks"], 7);
    assert_eq!(alice.get(&alice_path).await.0, 200);

    // Only the admin sets; a tenant sees no other token; bad values are refused clearly.
    let (status, body) = put_share(&alice, &alice_id.to_string(), json!({"weight": 1000})).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = alice.get(&format!("/api/v1/tokens/{bob_id}/share")).await;
    assert_eq!(status, 404);
    for (body, says) in [
        (json!({"weight": 0}), "weight"),
        (json!({"weight": 1001}), "weight"),
        (json!({"max_open_chunks": -1}), "max_open_chunks"),
        (
            json!({"max_submissions_per_minute": 10_000_000}),
            "max_submissions_per_minute",
        ),
        (json!({"weight": "heavy"}), "weight"),
        (json!({"shares": 3}), "shares"),
    ] {
        let (status, answer) = put_share(&admin, &alice_id.to_string(), body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
    let (status, _) = put_share(&admin, "999999", json!({"weight": 2})).await;
    assert_eq!(status, 404);
    let (status, _) = put_share(&admin, "not-a-token", json!({"weight": 2})).await;
    assert_eq!(status, 404);
    assert_eq!(admin.get("/api/v1/tokens/999999/share").await.0, 404);
    assert_eq!(admin.get("/api/v1/tokens/me/share").await.0, 422);
    // PUT replaces: what is left out goes back to the default.
    let (_, share) = put_share(&admin, &alice_id.to_string(), json!({})).await;
    assert_eq!(share["weight"], 1);
    assert_eq!(share["overrides"]["max_open_chunks"], Value::Null);
    server.stop().await;
}

async fn modules_are_deleted_by_their_owner_once_no_job_needs_them(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let (_, alice) = tenant(&admin).await;
    let (_, bob) = tenant(&admin).await;
    let id = alice.upload_module(echo()).await;
    let path = format!("/api/v1/modules/{id}");

    let (status, body) = bob.delete(&path).await;
    assert_eq!(status, 403, "not the uploader: {body}");
    let job = alice
        .submit(json!({"module": id, "inputs": [1, 2, 3]}))
        .await;
    let (status, body) = alice.delete(&path).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("job {job}")),
        "{body}"
    );
    // Downloaded once: the master's cache holds it, and must drop it on deletion.
    let download = reqwest::get(format!("{}{path}", server.http()))
        .await
        .unwrap();
    assert_eq!(download.status().as_u16(), 200);
    assert_eq!(alice.delete(&format!("/api/v1/jobs/{job}")).await.0, 200);
    let (status, body) = alice.delete(&path).await;
    assert_eq!(status, 204, "{body}");
    let download = reqwest::get(format!("{}{path}", server.http()))
        .await
        .unwrap();
    assert_eq!(download.status().as_u16(), 404);
    let (status, body) = alice
        .post("/api/v1/jobs", &json!({"module": id, "inputs": [1]}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_module");
    assert_eq!(alice.delete(&path).await.0, 404);
    let (status, _) = alice.delete("/api/v1/modules/sha256:zz").await;
    assert_eq!(status, 404);

    // The admin may delete anyone's; without a token nobody may.
    let id = bob.upload_module(trap()).await;
    let path = format!("/api/v1/modules/{id}");
    let anonymous = reqwest::Client::new()
        .delete(format!("{}{path}", server.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(admin.delete(&path).await.0, 204);
    assert_eq!(
        server
            .store
            .count("SELECT CAST(COALESCE(SUM(module_bytes), 0) AS BIGINT) FROM tenants")
            .await,
        0,
        "every deleted module's bytes were given back"
    );
    server.stop().await;
}

/// A worker that takes `slots` chunks at a time and answers each (echo) after `delay`, until
/// the connection ends.
fn spawn_slow_peer(ws: String, id: String, slots: u32, delay: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let peer = Peer::join(&ws, &id, slots).await;
        let (mut sink, mut stream) = peer.socket.split();
        let (replies, mut outbox) = tokio::sync::mpsc::unbounded_channel::<WorkerMessage>();
        let writer = tokio::spawn(async move {
            while let Some(message) = outbox.recv().await {
                let text = grid_protocol::to_json(&message);
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        });
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
            let text = match frame {
                Err(_) => {
                    let _ = replies.send(WorkerMessage::Heartbeat);
                    continue;
                }
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => break,
                Ok(Some(Ok(_))) => continue,
            };
            if let Ok(MasterMessage::Assign { lease, input, .. }) = MasterMessage::from_json(&text)
            {
                let replies = replies.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = replies.send(WorkerMessage::Result {
                        lease,
                        outcome: Outcome::Ok(input),
                    });
                });
            }
        }
        writer.abort();
    })
}

fn slow_peers(server: &InProcessServer, count: usize, delay: Duration) -> Vec<JoinHandle<()>> {
    (0..count)
        .map(|i| spawn_slow_peer(server.ws(), format!("slow-{i}"), 8, delay))
        .collect()
}

async fn job_view(api: &Api, id: i64) -> Value {
    let (status, view) = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{view}");
    view
}

async fn a_small_job_finishes_within_seconds_beside_a_huge_one(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let (_, big) = tenant(&admin).await;
    let (_, small) = tenant(&admin).await;
    // 30,000 chunks at most 4 × 8 / 25 ms = 1,280 a second: the big job runs for 20 s or more.
    let huge = big.submit(echo_job(30_000, "huge")).await;
    let peers = slow_peers(&server, 4, Duration::from_millis(25));
    big.wait_progress(huge, 500).await;

    let submitted = Instant::now();
    let inputs: Vec<Value> = (0..10).map(|i| json!({"small": i})).collect();
    let little = small
        .submit(json!({"kernel": "echo", "inputs": inputs.clone()}))
        .await;
    let finished = small.wait_finished(little, Duration::from_secs(60)).await;
    let took = submitted.elapsed();
    assert_eq!(finished["state"], "done", "{finished}");
    let outputs = small.outputs(little, 2).await;
    assert_eq!(outputs, inputs);
    let huge_now = job_view(&big, huge).await;
    assert_eq!(huge_now["state"], "running", "{huge_now}");
    let huge_done = huge_now["chunks"]["done"].as_i64().unwrap();
    assert!(huge_done < 30_000, "{huge_now}");
    assert!(
        took < Duration::from_secs(5),
        "the ten-chunk job took {took:?} beside the huge one ({huge_done} of its chunks done)"
    );
    println!("{backend:?}: ten chunks (redundancy 2) done in {took:?}; huge job at {huge_done}");
    for peer in peers {
        peer.abort();
    }
    server.stop().await;
}

async fn weights_two_to_one_share_dispatch_two_to_one(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let (heavy_id, heavy) = tenant(&admin).await;
    let (_, light) = tenant(&admin).await;
    let (status, body) = put_share(&admin, &heavy_id.to_string(), json!({"weight": 2})).await;
    assert_eq!(status, 200, "{body}");
    // Both backlogged before any worker connects; the light tenant's job is older and has the
    // higher priority, which orders only its own jobs.
    let mut light_job = echo_job(6_000, "light");
    light_job["priority"] = json!(1000);
    let light_id = light.submit(light_job).await;
    let heavy_job = heavy.submit(echo_job(6_000, "heavy")).await;
    let peers = slow_peers(&server, 4, Duration::from_millis(10));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = job_view(&heavy, heavy_job).await["chunks"]["done"]
            .as_i64()
            .unwrap()
            + job_view(&light, light_id).await["chunks"]["done"]
                .as_i64()
                .unwrap();
        if done >= 3_000 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} chunks done");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let issued =
        |job: i64| format!("SELECT count(*) FROM replicas WHERE job_id = {job} AND NOT ringer");
    let heavy_issued = server.store.count(&issued(heavy_job)).await;
    let light_issued = server.store.count(&issued(light_id)).await;
    for peer in peers {
        peer.abort();
    }
    let ratio = heavy_issued as f64 / light_issued as f64;
    println!(
        "{backend:?}: replicas issued {heavy_issued} (weight 2) : {light_issued} (weight 1) = {ratio:.3}"
    );
    assert!(
        (1.8..=2.2).contains(&ratio),
        "weights 2:1 gave {heavy_issued}:{light_issued} = {ratio:.3}"
    );
    assert!(
        light_issued < 6_000 && heavy_issued < 6_000,
        "both still backlogged"
    );
    server.stop().await;
}
