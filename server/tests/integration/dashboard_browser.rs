//! The dashboard, job, API and contribute pages in headless Chromium (Debian's chromium driven
//! by playwright-core, `frontend/tests/dashboard.mjs`): a host watches a Mandelbrot job go to
//! 100% on the dashboard while the plot receives data points, sees the picture on the job's
//! page, and a volunteer sees its credit; display names are shown as text, never as markup.
//!
//! Needs the web build (`frontend/dist`), Chromium, Node and `playwright-core`, as
//! `server/tests/integration/browser.rs` does; `cargo xtask test` provides them all.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::volunteers::Volunteers;
use common::{ADMIN_TOKEN, Api, Backend, InProcessServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const ADVICE: &str = "run `cargo xtask test`, which builds the pages before the server and \
                      installs the browser tools";
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);
/// What the volunteer calls itself: markup, to show it is never treated as such.
const DISPLAY_NAME: &str = "<img src=x onerror=window.x=1>";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Node and Chromium, or a failure saying what to do.
fn tools() -> (String, String) {
    let root = repo_root();
    for page in ["dashboard.html", "job.html", "api.html"] {
        assert!(
            root.join("frontend/dist").join(page).exists(),
            "frontend/dist/{page} is missing: {ADVICE}"
        );
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is missing ({chromium}): {ADVICE}"
    );
    assert!(
        root.join("frontend/node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in frontend/node_modules: {ADVICE}"
    );
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    (node, chromium)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_watches_a_job_live_and_sees_its_picture() {
    let (node, chromium) = tools();
    let server = InProcessServer::start(Backend::Postgres).await;
    let page = reqwest::get(format!("{}/dashboard", server.http()))
        .await
        .unwrap();
    assert_eq!(
        page.status().as_u16(),
        200,
        "the master does not serve the dashboard: {ADVICE}"
    );
    let api = Api::new(&server.http(), ADMIN_TOKEN);

    // 48 tiles of 32 × 32: a 256 × 192 picture, agreed by two volunteers.
    let mut inputs = Vec::new();
    for ty in 0..6 {
        for tx in 0..8 {
            inputs.push(json!({
                "width": 256, "height": 192,
                "x_min": -2.2, "x_max": 0.8, "y_min": -1.125, "y_max": 1.125, "max_iter": 400,
                "tile": {"x": tx * 32, "y": ty * 32, "w": 32, "h": 32},
            }));
        }
    }
    let job = api
        .submit(
            json!({"kernel": "mandelbrot", "inputs": inputs, "redundancy": 2,
                       "name": "dashboard test"}),
        )
        .await;
    // The volunteer names itself before contributing.
    let volunteer = "browser-test-volunteer";
    let response = reqwest::Client::new()
        .put(format!("{}/api/v1/volunteers/me", server.http()))
        .header("x-grid-volunteer", volunteer)
        .json(&json!({"display_name": DISPLAY_NAME}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    let mut child = tokio::process::Command::new(&node)
        .arg(repo_root().join("frontend/tests/dashboard.mjs"))
        .args([
            &server.http(),
            ADMIN_TOKEN,
            &job.to_string(),
            volunteer,
            DISPLAY_NAME,
        ])
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {node}: {error}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let run = async {
        // The page shows the job at 0%: start computing, slowly enough to be watched.
        let mut last = String::new();
        let mut volunteers = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "ready" && volunteers.is_none() {
                volunteers = Some(Volunteers::start_with_delay(
                    &server,
                    &[(volunteer, false), ("browser-test-other", false)],
                    "mandelbrot",
                    Duration::from_millis(150),
                ));
            }
            last = line;
        }
        let status = child.wait().await.unwrap();
        (status, last)
    };
    let (status, last) = tokio::time::timeout(SCENARIO_TIMEOUT, run)
        .await
        .expect("the dashboard scenario ran over its time");
    assert!(status.success(), "dashboard.mjs failed: {last}");
    let summary: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["chunks"], 48, "{summary}");
    assert_eq!(summary["picture"], json!({"width": 256, "height": 192}));

    let finished = api.wait_finished(job, Duration::from_secs(5)).await;
    assert_eq!(finished["state"], "done");
    server.stop().await;
}
