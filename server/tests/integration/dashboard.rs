//! What people watching the grid see, on both backends: a `mandelbrot` job's picture, a job's
//! events, chunk maps, the dashboard's live feed, volunteers' credit and display names.
//!
//! Work is done by hand-driven protocol peers computing with the real kernels, so every test
//! knows exactly which volunteer computed what.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::volunteers::{Events, Volunteers};
use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, primes_inputs};
use serde_json::{Value, json};

fn mandelbrot_job(width: u32, height: u32, tile: u32) -> Value {
    let mut inputs = Vec::new();
    for y in (0..height).step_by(tile as usize) {
        for x in (0..width).step_by(tile as usize) {
            inputs.push(json!({
                "width": width, "height": height,
                "x_min": -2.2, "x_max": 0.8, "y_min": -1.0, "y_max": 1.0, "max_iter": 300,
                "tile": {"x": x, "y": y, "w": tile.min(width - x), "h": tile.min(height - y)},
            }));
        }
    }
    json!({"kernel": "mandelbrot", "inputs": inputs, "redundancy": 2})
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Decode a PNG to RGBA.
fn decode(bytes: &[u8]) -> (u32, u32, Vec<[u8; 4]>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgba => 4,
        other => panic!("expected RGBA after expansion, got {other:?}"),
    };
    let pixels = buffer[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2], p[3]])
        .collect();
    (info.width, info.height, pixels)
}

async fn a_mandelbrot_job_becomes_a_picture(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let body = mandelbrot_job(40, 30, 16);
    let job = api.submit(body.clone()).await;
    let url = format!("{}/api/v1/jobs/{job}/image.png", server.http());

    // Before any result: the whole frame, transparent, not complete.
    let response = get(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.headers()["x-grid-image-complete"], "false");
    let (width, height, pixels) = decode(&response.bytes().await.unwrap());
    assert_eq!((width, height), (40, 30));
    assert!(pixels.iter().all(|p| p[3] == 0));
    // The chunk map: every chunk waiting.
    let (status, map) = api.get(&format!("/api/v1/jobs/{job}/chunks")).await;
    assert_eq!(status, 200);
    assert_eq!(map, json!({"total": 6, "states": "oooooo"}));

    let volunteers =
        Volunteers::start(&server, &[("pic-a", false), ("pic-b", false)], "mandelbrot");
    let finished = api.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    drop(volunteers);

    let response = get(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-grid-image-complete"], "true");
    let (width, height, pixels) = decode(&response.bytes().await.unwrap());
    assert_eq!((width, height), (40, 30));
    // Every pixel is the colour of its iteration count, as the kernel computes it.
    let mut inside = 0;
    for input in body["inputs"].as_array().unwrap() {
        let output = grid_kernels::run("mandelbrot", input).unwrap();
        let tile = &output["tile"];
        let (tx, ty, tw) = (
            tile["x"].as_u64().unwrap(),
            tile["y"].as_u64().unwrap(),
            tile["w"].as_u64().unwrap(),
        );
        for (i, count) in output["iterations"].as_array().unwrap().iter().enumerate() {
            let count = count.as_u64().unwrap() as u32;
            let (x, y) = (tx + i as u64 % tw, ty + i as u64 / tw);
            let pixel = pixels[(y * 40 + x) as usize];
            assert_eq!(
                pixel,
                grid_server::api::image::colour(count, 300),
                "pixel ({x}, {y}) with {count} iterations"
            );
            if count == 300 {
                inside += 1;
                assert_eq!(pixel, [0, 0, 0, 255]);
            }
        }
    }
    assert!(inside > 0, "the view contains points of the set");
    let (_, map) = api.get(&format!("/api/v1/jobs/{job}/chunks")).await;
    assert_eq!(map["states"], "dddddd");

    // Only mandelbrot jobs have a picture; other people's jobs and bad ids are not found.
    let primes = api
        .submit(json!({"kernel": "primes", "inputs": primes_inputs(0, 100, 1)}))
        .await;
    let response = get(
        &format!("{}/api/v1/jobs/{primes}/image.png", server.http()),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let (_, token) = api.post("/api/v1/tokens", &json!({})).await;
    let other = token["token"].as_str().unwrap();
    for (path, token) in [
        (format!("/api/v1/jobs/{job}/image.png"), Some(other)),
        ("/api/v1/jobs/nope/image.png".into(), Some(ADMIN_TOKEN)),
        ("/api/v1/jobs/99999/image.png".into(), Some(ADMIN_TOKEN)),
        (format!("/api/v1/jobs/{job}/chunks"), Some(other)),
    ] {
        let response = get(&format!("{}{path}", server.http()), token).await;
        assert_eq!(response.status().as_u16(), 404, "{path}");
    }
    assert_eq!(get(&url, None).await.status().as_u16(), 401);

    // Frames over the limit are refused rather than drawn.
    let huge = api
        .submit(json!({"kernel": "mandelbrot", "inputs": [{
            "width": 8192, "height": 8192, "x_min": -2.0, "x_max": 1.0, "y_min": -1.5,
            "y_max": 1.5, "max_iter": 10, "tile": {"x": 0, "y": 0, "w": 1, "h": 1}}]}))
        .await;
    let response = get(
        &format!("{}/api/v1/jobs/{huge}/image.png", server.http()),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(response.status().as_u16(), 413);

    // A cancelled job's undecided chunks show as such.
    let cancelled = api
        .submit(json!({"kernel": "primes", "inputs": primes_inputs(0, 1000, 3)}))
        .await;
    let (status, body) = api.delete(&format!("/api/v1/jobs/{cancelled}")).await;
    assert_eq!(status, 200, "{body}");
    let (_, map) = api.get(&format!("/api/v1/jobs/{cancelled}/chunks")).await;
    let states = map["states"].as_str().unwrap();
    assert_eq!(states.len(), 3);
    assert!(states.chars().all(|c| "cd".contains(c)), "{map}");
    server.stop().await;
}

async fn job_events_stream_every_decision_and_the_end(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    // Chunk 0 fails: two volunteers, one lying about it, and no room for a third result.
    let inputs = primes_inputs(0, 60_000, 6);
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2, "max_replicas": 2}))
        .await;
    let url = format!("{}/api/v1/jobs/{job}/events", server.http());
    let (status, events) = Events::open(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let mut events = events.unwrap();
    let (name, first) = events.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(name, "job");
    assert_eq!(first["id"], job);
    assert_eq!(first["state"], "queued");

    let _volunteers = Volunteers::start(&server, &[("ev-a", false), ("ev-b", true)], "primes");
    let mut accepted = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let mut progress = 0;
    let done = loop {
        let (name, data) = events
            .next(Duration::from_secs(60))
            .await
            .expect("the stream ended before job_done");
        match name.as_str() {
            "chunk_accepted" => {
                assert_eq!(data["agreeing"], 2, "{data}");
                assert!(
                    accepted.insert(data["index"].as_i64().unwrap()),
                    "twice: {data}"
                );
            }
            "chunk_failed" => {
                assert!(
                    data["error"].as_str().unwrap().contains("no quorum"),
                    "{data}"
                );
                assert!(
                    failed.insert(data["index"].as_i64().unwrap()),
                    "twice: {data}"
                );
            }
            "progress" => {
                progress += 1;
                let chunks = &data["chunks"];
                assert!(
                    chunks["done"].as_usize() <= accepted.len()
                        && chunks["failed"].as_usize() <= failed.len(),
                    "progress ahead of the chunk events: {data}"
                );
            }
            "job_done" => break data,
            other => panic!("unexpected event {other}: {data}"),
        }
    };
    assert_eq!(accepted, (1..6).collect());
    assert_eq!(failed, BTreeSet::from([0]));
    assert!(progress >= 1);
    assert_eq!(done["state"], "failed");
    assert_eq!(done["chunks"]["done"], 5);
    // The stream ends after job_done.
    assert_eq!(events.next(Duration::from_secs(10)).await, None);

    // Connecting after the end replays every decision, then the end.
    let (_, events) = Events::open(&url, Some(ADMIN_TOKEN)).await;
    let mut events = events.unwrap();
    let mut names = Vec::new();
    while let Some((name, _)) = events.next(Duration::from_secs(10)).await {
        names.push(name);
    }
    assert_eq!(names.first().map(String::as_str), Some("job"));
    assert_eq!(names.last().map(String::as_str), Some("job_done"));
    assert_eq!(names.iter().filter(|n| *n == "chunk_accepted").count(), 5);
    assert_eq!(names.iter().filter(|n| *n == "chunk_failed").count(), 1);

    // Tokens and ownership as everywhere else.
    assert_eq!(Events::open(&url, None).await.0, 401);
    let (_, token) = api.post("/api/v1/tokens", &json!({})).await;
    assert_eq!(Events::open(&url, token["token"].as_str()).await.0, 404);
    server.stop().await;
}

trait AsUsize {
    fn as_usize(&self) -> usize;
}

impl AsUsize for Value {
    fn as_usize(&self) -> usize {
        self.as_u64().unwrap() as usize
    }
}

async fn volunteer_request(
    server: &InProcessServer,
    method: reqwest::Method,
    identity: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method, format!("{}/api/v1/volunteers/me", server.http()));
    if let Some(identity) = identity {
        request = request.header("x-grid-volunteer", identity);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn volunteers_earn_credit_for_verified_work(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let (status, board) = api.get("/api/v1/volunteers").await;
    assert_eq!(status, 200);
    assert_eq!(board, json!({"volunteers": [], "total": 0}));

    // Three volunteers; the liar's word on chunk 0 is outvoted and earns nothing there.
    let job = api
        .submit(
            json!({"kernel": "primes", "inputs": primes_inputs(0, 60_000, 6),
                       "redundancy": 2, "max_replicas": 3}),
        )
        .await;
    let volunteers = Volunteers::start(
        &server,
        &[
            ("cr-honest-1", false),
            ("cr-honest-2", false),
            ("cr-liar", true),
        ],
        "primes",
    );
    let finished = api.wait_finished(job, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    drop(volunteers);

    let valid = server
        .store
        .count(&format!(
            "SELECT count(*) FROM replicas WHERE job_id = {job} AND verdict = 'valid' AND NOT ringer"
        ))
        .await;
    // Credit is cached for a second once chunks are decided: wait for it to catch up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let response = get(&format!("{}/api/v1/volunteers", server.http()), None).await;
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await.unwrap();
        let board: Value = serde_json::from_str(&text).unwrap();
        let results: i64 = board["volunteers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["results"].as_i64().unwrap())
            .sum();
        if results == valid {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{board}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !text.contains("cr-honest") && !text.contains("cr-liar"),
        "worker identities are private: {text}"
    );
    let board: Value = serde_json::from_str(&text).unwrap();
    let entries = board["volunteers"].as_array().unwrap();
    assert!(!entries.is_empty());
    for (rank, entry) in entries.iter().enumerate() {
        assert_eq!(entry["rank"], rank + 1);
        assert!(entry["credit_seconds"].as_f64().unwrap() > 0.0, "{entry}");
        assert_eq!(entry["name"], entry["pseudonym"]);
        assert!(entry["display_name"].is_null());
        if rank > 0 {
            assert!(
                entry["credit_seconds"].as_f64() <= entries[rank - 1]["credit_seconds"].as_f64()
            );
        }
    }

    // A volunteer's own figures; the identity comes in X-Grid-Volunteer.
    let (status, me) =
        volunteer_request(&server, reqwest::Method::GET, Some("cr-honest-1"), None).await;
    assert_eq!(status, 200, "{me}");
    assert!(me["results"].as_i64().unwrap() >= 1, "{me}");
    assert!(me["credit_seconds"].as_f64().unwrap() > 0.0, "{me}");
    let rank = me["rank"].as_u64().unwrap() as usize;
    assert_eq!(entries[rank - 1]["pseudonym"], me["pseudonym"]);
    // Only valid results count (the liar's outvoted one does not).
    for identity in ["cr-honest-1", "cr-honest-2", "cr-liar"] {
        let (_, figures) =
            volunteer_request(&server, reqwest::Method::GET, Some(identity), None).await;
        let valid = server
            .store
            .count(&format!(
                "SELECT count(*) FROM replicas WHERE worker_id = '{identity}' AND verdict = 'valid' AND NOT ringer"
            ))
            .await;
        assert_eq!(figures["results"], valid, "{identity}: {figures}");
    }
    let (status, nobody) =
        volunteer_request(&server, reqwest::Method::GET, Some("never-seen"), None).await;
    assert_eq!(status, 200);
    assert_eq!(nobody["results"], 0);
    assert!(nobody["rank"].is_null());

    // Display names: set, trimmed, shown on the leaderboard as plain text.
    let name = "  <img src=x onerror=alert(1)>&Ad ";
    let (status, me) = volunteer_request(
        &server,
        reqwest::Method::PUT,
        Some("cr-honest-1"),
        Some(&json!({"display_name": name}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["display_name"], name.trim());
    let (_, board) = api.get("/api/v1/volunteers").await;
    let shown = &board["volunteers"][rank - 1];
    assert_eq!(shown["name"], name.trim(), "{board}");
    assert_eq!(shown["display_name"], name.trim());
    let long_ok = "é".repeat(32);
    let (status, _) = volunteer_request(
        &server,
        reqwest::Method::PUT,
        Some("cr-honest-2"),
        Some(&json!({"display_name": long_ok}).to_string()),
    )
    .await;
    assert_eq!(status, 200);

    // Bad names are refused with the API's 422 and change nothing.
    for bad in [
        json!({"display_name": ""}),
        json!({"display_name": "   "}),
        json!({"display_name": "x".repeat(33)}),
        json!({"display_name": "line\nbreak"}),
        json!({"display_name": "tab\tname"}),
        json!({"display_name": "rtl\u{202E}override"}),
        json!({"display_name": "zero\u{200B}width"}),
        json!({"display_name": "two  spaces"}),
    ] {
        let (status, body) = volunteer_request(
            &server,
            reqwest::Method::PUT,
            Some("cr-honest-1"),
            Some(&bad.to_string()),
        )
        .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{body}");
    }
    for (body, expected) in [
        (r#"{"display_name": 5}"#, 422),
        (r#"{"display_name": "a", "extra": 1}"#, 422),
        (r#"{"display_name": "#, 400),
    ] {
        let (status, _) = volunteer_request(
            &server,
            reqwest::Method::PUT,
            Some("cr-honest-1"),
            Some(body),
        )
        .await;
        assert_eq!(status, expected, "{body}");
    }
    let (_, me) = volunteer_request(&server, reqwest::Method::GET, Some("cr-honest-1"), None).await;
    assert_eq!(me["display_name"], name.trim());

    // Without a valid identity: 401.
    for identity in [None, Some("has space"), Some("")] {
        let (status, body) = volunteer_request(
            &server,
            reqwest::Method::PUT,
            identity,
            Some(r#"{"display_name": "x"}"#),
        )
        .await;
        assert_eq!(status, 401, "{identity:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }

    // null removes the name.
    let (status, me) = volunteer_request(
        &server,
        reqwest::Method::PUT,
        Some("cr-honest-1"),
        Some(r#"{"display_name": null}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert!(me["display_name"].is_null());
    let (_, board) = api.get("/api/v1/volunteers?limit=1").await;
    assert_eq!(board["volunteers"].as_array().unwrap().len(), 1);
    let (status, _) = api.get("/api/v1/volunteers?limit=0").await;
    assert_eq!(status, 422);

    // The finished job's credit was settled once, however often credit is read since; a job
    // still running is added up live on top of it.
    let second = api
        .submit(json!({"kernel": "primes", "inputs": primes_inputs(0, 400_000, 40)}))
        .await;
    let volunteers = Volunteers::start_with_delay(
        &server,
        &[("cr-honest-1", false), ("cr-late", false)],
        "primes",
        Duration::from_millis(100),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.get(&format!("/api/v1/jobs/{second}")).await.1["chunks"]["done"] == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(volunteers);
    let (_, running) = api.get(&format!("/api/v1/jobs/{second}")).await;
    assert_eq!(running["state"], "running", "{running}");
    // The volunteers are gone: what is valid now stays so. Wait for credit to catch up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let valid = server
        .store
        .count("SELECT count(*) FROM replicas WHERE verdict = 'valid' AND NOT ringer")
        .await;
    let settled = server
        .store
        .count("SELECT count(*) FROM credited_jobs")
        .await;
    assert_eq!(settled, 1, "only the finished job is settled");
    for _ in 0..3 {
        // Changing a name drops the cached credit: every read recomputes it.
        volunteer_request(
            &server,
            reqwest::Method::PUT,
            Some("cr-late"),
            Some(r#"{"display_name": "late"}"#),
        )
        .await;
        let (_, board) = api.get("/api/v1/volunteers").await;
        let results: i64 = board["volunteers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["results"].as_i64().unwrap())
            .sum();
        assert_eq!(results, valid, "{board}");
    }
    server.stop().await;
}

async fn the_dashboard_feed_is_live(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let url = format!("{}/api/v1/dashboard/events", server.http());

    // Without a token: grid-wide figures only.
    let (_, public) = Events::open(&url, None).await;
    let mut public = public.unwrap();
    let (name, history) = public.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(name, "history");
    assert_eq!(history["interval_ms"], 1000);
    let mut names = Vec::new();
    while names.iter().filter(|n| *n == "sample").count() < 2 {
        let (name, data) = public.next(Duration::from_secs(10)).await.unwrap();
        if name == "sample" {
            assert!(data["time_ms"].as_i64().unwrap() > 0);
            assert!(data["workers"]["native"].is_u64(), "{data}");
            assert!(data["chunks"]["open"].is_i64(), "{data}");
        }
        names.push(name);
    }
    assert!(!names.contains(&"jobs".to_owned()), "{names:?}");
    assert!(names.contains(&"leaderboard".to_owned()), "{names:?}");
    drop(public);

    assert_eq!(Events::open(&url, Some("wrong")).await.0, 401);

    // With a token: the token's jobs too, and they move.
    let job = api
        .submit(
            json!({"kernel": "primes", "inputs": primes_inputs(0, 400_000, 40), "name": "feed"}),
        )
        .await;
    let (_, feed) = Events::open(&url, Some(ADMIN_TOKEN)).await;
    let mut feed = feed.unwrap();
    let _volunteers = Volunteers::start(&server, &[("feed-a", false), ("feed-b", false)], "primes");
    let mut busiest: f64 = 0.0;
    let mut seen_done = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(seen_done && busiest > 0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "busiest {busiest}, done {seen_done}"
        );
        let (name, data) = feed.next(Duration::from_secs(10)).await.unwrap();
        match name.as_str() {
            "sample" => {
                busiest = busiest.max(data["results_per_second"].as_f64().unwrap());
            }
            "jobs" => {
                let ours = data["jobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|j| j["id"] == job)
                    .cloned()
                    .unwrap();
                assert_eq!(ours["name"], "feed");
                assert_eq!(ours["chunks"]["total"], 40);
                seen_done |= ours["state"] == "done" && ours["chunks"]["done"] == 40;
            }
            _ => {}
        }
    }
    // A dashboard opened now gets the recent samples at once.
    let (_, late) = Events::open(&url, None).await;
    let (name, history) = late.unwrap().next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(name, "history");
    let samples = history["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{history}");
    assert!(
        samples
            .iter()
            .any(|s| s["results_per_second"].as_f64().unwrap() > 0.0),
        "{history}"
    );
    server.stop().await;
}

async fn streams_end_when_the_master_shuts_down(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let job = api
        .submit(json!({"kernel": "primes", "inputs": primes_inputs(0, 1000, 2)}))
        .await;
    let (_, dashboard) =
        Events::open(&format!("{}/api/v1/dashboard/events", server.http()), None).await;
    let mut dashboard = dashboard.unwrap();
    let (_, job_events) = Events::open(
        &format!("{}/api/v1/jobs/{job}/events", server.http()),
        Some(ADMIN_TOKEN),
    )
    .await;
    let mut job_events = job_events.unwrap();
    assert_eq!(
        dashboard.next(Duration::from_secs(10)).await.unwrap().0,
        "history"
    );
    assert_eq!(
        job_events.next(Duration::from_secs(10)).await.unwrap().0,
        "job"
    );
    let started = tokio::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "open event streams held the shutdown up"
    );
    for stream in [&mut dashboard, &mut job_events] {
        while stream.next(Duration::from_secs(5)).await.is_some() {}
    }
}

on_both_backends!(
    a_mandelbrot_job_becomes_a_picture,
    job_events_stream_every_decision_and_the_end,
    volunteers_earn_credit_for_verified_work,
    the_dashboard_feed_is_live,
    streams_end_when_the_master_shuts_down,
);
