//! Issue 19, "reads that cannot blow up" (H7, M2), over real sockets: results downloads page by
//! bytes and are capped in number; event streams are capped globally and per network, and
//! carry errors cut short.
//!
//! Every test targets 127.0.0.0/8 only and bounds its own time.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::IpAddr;
use std::time::Duration;

use common::volunteers::Events;
use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer};
use grid_protocol::{Outcome, WorkerMessage};
use grid_server::ServeOptions;
use grid_server::limits::{Limits, RESULTS_PAGE_BYTES, RESULTS_PAGE_ROWS};
use grid_server::network::NetworkPolicy;
use serde_json::{Value, json};

on_both_backends!(
    results_are_paged_by_bytes_and_downloads_are_capped,
    chunk_failed_events_carry_errors_cut_short,
);

/// Outputs made this large (bytes of text) by the tests.
const BIG: usize = 1_000_000;

/// An echo job of `chunks` chunks at redundancy 1, computed by one honest peer.
async fn finished_echo_job(server: &InProcessServer, api: &Api, chunks: usize) -> i64 {
    let inputs: Vec<Value> = (0..chunks).map(|i| json!({"i": i})).collect();
    let id = api
        .submit(json!({"kernel": "echo", "redundancy": 1, "inputs": inputs}))
        .await;
    let mut peer = Peer::join(&server.ws(), "streams-honest", 1).await;
    let answering = tokio::spawn(async move {
        loop {
            let (lease, input) = peer.next_assignment().await;
            peer.send(&WorkerMessage::Result {
                lease,
                outcome: Outcome::Ok(input),
            })
            .await;
        }
    });
    let job = api.wait_finished(id, Duration::from_secs(60)).await;
    answering.abort();
    assert_eq!(job["state"], "done", "{job}");
    id
}

/// `'"' || (BIG x's) || '"'`: a JSON string of BIG bytes plus quotes, in the backend's SQL.
fn big_json_string(backend: Backend) -> String {
    match backend {
        Backend::Postgres => format!("'\"' || repeat('x', {BIG}) || '\"'"),
        Backend::Sqlite => format!(
            "'\"' || replace(hex(zeroblob({})), '0', 'x') || '\"'",
            BIG / 2
        ),
    }
}

async fn results_are_paged_by_bytes_and_downloads_are_capped(backend: Backend) {
    let server = InProcessServer::start_with(
        backend,
        Limits {
            max_downloads: 1,
            ..Limits::default()
        },
    )
    .await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let id = finished_echo_job(&server, &api, 24).await;
    // Outputs of a megabyte each, as a tenant's module (or colluding liars) could give a job.
    server
        .store
        .execute(&format!(
            "UPDATE chunks SET output = {} WHERE job_id = {id}",
            big_json_string(backend)
        ))
        .await;

    // A page holds as many whole results as fit in RESULTS_PAGE_BYTES: 8 of 1,000,002 bytes.
    let store = server.store.shared();
    let mut after = -1;
    let mut pages = Vec::new();
    loop {
        let page = store
            .results_page(id, after, RESULTS_PAGE_ROWS, RESULTS_PAGE_BYTES)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.index;
        let bytes: usize = page
            .iter()
            .map(|r| r.output.as_ref().map_or(0, String::len))
            .sum();
        assert!(
            bytes <= RESULTS_PAGE_BYTES as usize,
            "a page of {bytes} bytes"
        );
        pages.push(page.len());
    }
    assert_eq!(pages, [8, 8, 8]);
    // One result larger than a page still goes out, alone.
    let huge = store
        .results_page(id, 3, RESULTS_PAGE_ROWS, 10)
        .await
        .unwrap();
    assert_eq!(huge.iter().map(|r| r.index).collect::<Vec<_>>(), [4]);

    // One download streams; a second at once is refused with a clear, retryable error.
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/jobs/{id}/results", server.http());
    let first = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let refused = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_downloads", "{body}");

    // The first download is whole and in order.
    let text = first.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 24);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(line["output"].as_str().map(str::len), Some(BIG));
    }

    // Its place is given back when it ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = client
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if again.status().as_u16() == 200 {
            assert_eq!(again.text().await.unwrap().lines().count(), 24);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download's place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

async fn chunk_failed_events_carry_errors_cut_short(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let id = finished_echo_job(&server, &api, 3).await;
    // A chunk that failed with an error of 1 MB (agreed by its workers, as a module's
    // failure text can be).
    let long_error = match backend {
        Backend::Postgres => format!("repeat('e', {BIG})"),
        Backend::Sqlite => format!("replace(hex(zeroblob({})), '0', 'e')", BIG / 2),
    };
    server
        .store
        .execute(&format!(
            "UPDATE chunks SET state = 'failed', output = NULL, error = {long_error}
             WHERE job_id = {id} AND idx = 1"
        ))
        .await;

    let url = format!("{}/api/v1/jobs/{id}/events", server.http());
    let (status, events) = Events::open(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let mut events = events.unwrap();
    let mut failed = None;
    while let Some((name, data)) = events.next(Duration::from_secs(10)).await {
        if name == "chunk_failed" {
            failed = Some(data);
        }
        if name == "job_done" {
            break;
        }
    }
    let failed = failed.expect("a chunk_failed event");
    assert_eq!(failed["index"], 1);
    assert_eq!(
        failed["error"].as_str().map(str::len),
        Some(grid_server::limits::EVENT_ERROR_CHARS as usize),
        "the event's error is cut"
    );
    // The results still carry the whole text.
    let results = api.results(id).await;
    assert_eq!(results[1]["error"].as_str().map(str::len), Some(BIG));
    server.stop().await;
}

/// `GET path` with the admin token from the local address `source`; the response (kept open
/// by the caller for a stream).
async fn get_from(source: [u8; 4], url: &str) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .local_address(IpAddr::from(source))
        .build()
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.get(url).bearer_auth(ADMIN_TOKEN).send(),
    )
    .await
    .expect("an answer within 10 s")
    .unwrap()
}

async fn refused_with(response: reqwest::Response, status: u16, what: &str) -> Option<String> {
    assert_eq!(response.status().as_u16(), status, "{what}");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "too_many_event_streams",
        "{what}: {body}"
    );
    retry_after
}

#[tokio::test]
async fn event_streams_are_capped_globally_and_per_network() {
    let server = InProcessServer::start_with_options(
        Backend::Sqlite,
        ServeOptions {
            limits: Limits {
                max_event_streams: 3,
                max_event_streams_per_network: 2,
                ..Limits::default()
            },
            // No trusted network: every 127.x.y.0/24 is a network of its own.
            networks: NetworkPolicy::parse("24,48", "", "").unwrap(),
            ..ServeOptions::default()
        },
    )
    .await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    // A job nobody computes: its streams stay open until it is cancelled.
    let id = api
        .submit(json!({"kernel": "echo", "inputs": [{"i": 0}]}))
        .await;
    let events = format!("{}/api/v1/jobs/{id}/events", server.http());
    let dashboard = format!("{}/api/v1/dashboard/events", server.http());

    let a1 = get_from([127, 0, 5, 1], &events).await;
    let a2 = get_from([127, 0, 5, 2], &dashboard).await;
    assert_eq!((a1.status().as_u16(), a2.status().as_u16()), (200, 200));
    // A third from the same /24: 429, whichever stream it asks for.
    let retry = refused_with(
        get_from([127, 0, 5, 3], &events).await,
        429,
        "a third stream from one network",
    )
    .await;
    assert_eq!(retry, None);
    // Another network takes the last place; then the master is full: 503 with Retry-After.
    let b1 = get_from([127, 0, 6, 1], &events).await;
    assert_eq!(b1.status().as_u16(), 200);
    let retry = refused_with(
        get_from([127, 0, 7, 1], &dashboard).await,
        503,
        "a stream over the master's cap",
    )
    .await;
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Refused requests took no place: the job's streams end with the job, and their places
    // come back.
    let (status, body) = api.delete(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    for stream in [a1, b1] {
        let text = tokio::time::timeout(Duration::from_secs(10), stream.text())
            .await
            .expect("the job's stream ends with the job")
            .unwrap();
        assert!(text.contains("event: job_done"), "{text}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = get_from([127, 0, 5, 3], &dashboard).await;
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended streams' places never came back: {}",
            again.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(a2);
    server.stop().await;
}
