//! Operations: Prometheus metrics that move when work is done, readiness, JSON logs, and a
//! SIGTERM during a job that loses nothing.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    ADMIN_TOKEN, Api, Backend, Home, InProcessServer, Peer, primes_inputs, primes_reference,
    primes_total, spawn_server_process, spawn_worker, target_dir_binary,
};
use grid_protocol::{Outcome, WorkerMessage};
use serde_json::{Value, json};

on_both_backends!(
    metrics_parse_and_move_when_a_job_runs,
    sigterm_during_a_job_loses_nothing
);

async fn scrape(server: &InProcessServer) -> prometheus_parse::Scrape {
    let response = reqwest::get(format!("{}/metrics", server.http()))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("/metrics is Prometheus text")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| label.is_none_or(|(k, v)| sample.labels.get(k) == Some(v)))
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn metrics_parse_and_move_when_a_job_runs(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let before = scrape(&server).await;
    let results_before = value(&before, "grid_results_total", None);
    let accepted_before = value(
        &before,
        "grid_chunks_decided_total",
        Some(("outcome", "accepted")),
    );

    let job = api
        .submit(json!({"kernel": "echo", "inputs": [1, 2, 3, 4, 5], "redundancy": 1}))
        .await;
    let mut peer = Peer::join(&server.ws(), "metrics-peer", 5).await;
    for _ in 0..5 {
        let (lease, input) = peer.next_assignment().await;
        peer.send(&WorkerMessage::Result {
            lease,
            outcome: Outcome::Ok(input),
        })
        .await;
    }
    let finished = api.wait_finished(job, Duration::from_secs(20)).await;
    assert_eq!(finished["state"], "done");

    let after = scrape(&server).await;
    assert!(value(&after, "grid_results_total", None) >= results_before + 5.0);
    assert!(
        value(
            &after,
            "grid_chunks_decided_total",
            Some(("outcome", "accepted"))
        ) >= accepted_before + 5.0
    );
    // Gauges read from this master's own database.
    assert_eq!(value(&after, "grid_chunks", Some(("state", "done"))), 5.0);
    assert_eq!(value(&after, "grid_chunks", Some(("state", "open"))), 0.0);
    assert!(value(&after, "grid_workers_connected", Some(("kind", "native"))) >= 1.0);
    assert!(
        after
            .samples
            .iter()
            .any(|sample| sample.metric == "grid_db_commit_seconds_count"),
        "the commit latency histogram is exported"
    );

    let ready = reqwest::get(format!("{}/readyz", server.http()))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    server.stop().await;
}

async fn sigterm_during_a_job_loses_nothing(backend: Backend) {
    let home = Home::new(backend).await;
    let (mut master, addr) = spawn_server_process(&home, "127.0.0.1:0");
    let api = Api::new(&format!("http://{addr}"), ADMIN_TOKEN);
    let ws = format!("ws://{addr}/ws");
    let inputs = primes_inputs(100_000_000_000, 100_000_000_000 + 40 * 30_000_000, 40);
    let expected = primes_reference(&inputs);
    let identities = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&ws, 1, &identities.path().join("w1.id"));
    let _w2 = spawn_worker(&ws, 1, &identities.path().join("w2.id"));
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    loop {
        let (_, body) = api.get(&format!("/api/v1/jobs/{job}")).await;
        if body["chunks"]["done"].as_i64().unwrap_or(0) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = master.terminate();
        (status, master)
    })
    .await
    .unwrap();
    let (status, _master) = status;
    let status = status.expect("grid-server did not exit within 10 s of SIGTERM");
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let (_restarted, _) = spawn_server_process(&home, &addr.to_string());
    let finished = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(job).await;
    assert_eq!(primes_total(&results, 40, None), expected);
}

/// `grid-server backup --to FILE` on the embedded database while its master runs a job.
fn run_backup(data_dir: &std::path::Path, to: &std::path::Path) -> std::process::Output {
    Command::new(target_dir_binary("grid-server"))
        .env_remove("DATABASE_URL")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("backup")
        .arg("--to")
        .arg(to)
        .output()
        .unwrap()
}

/// The embedded database is backed up online, mid-job, and the copy restored into a new data
/// directory is a working master: the job finished before the copy is there with every
/// verified result, the one running during it resumes and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_of_the_embedded_database_restores() {
    let home = Home::new(Backend::Sqlite).await;
    let Home::Sqlite(data_dir) = &home else {
        unreachable!()
    };
    let (master, addr) = spawn_server_process(&home, "127.0.0.1:0");
    let api = Api::new(&format!("http://{addr}"), ADMIN_TOKEN);
    let ws = format!("ws://{addr}/ws");
    let identities = tempfile::tempdir().unwrap();
    let w1 = spawn_worker(&ws, 1, &identities.path().join("w1.id"));
    let w2 = spawn_worker(&ws, 1, &identities.path().join("w2.id"));

    let first_inputs = primes_inputs(1_000_000, 2_000_000, 10);
    let first = api
        .submit(json!({"kernel": "primes", "inputs": first_inputs, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(first, Duration::from_secs(60)).await;
    assert_eq!(finished["state"], "done", "{finished}");

    // The second job runs while the copy is taken.
    // About 20 s of work for the two workers, so it outlasts the copy on a fast machine.
    const CHUNKS: u64 = 300;
    let second_inputs = primes_inputs(
        200_000_000_000,
        200_000_000_000 + CHUNKS * 40_000_000,
        CHUNKS,
    );
    let second = api
        .submit(json!({"kernel": "primes", "inputs": second_inputs, "redundancy": 2}))
        .await;
    api.wait_progress(second, 3).await;

    let backups = tempfile::tempdir().unwrap();
    let copy = backups.path().join("grid-backup.db");
    let output = run_backup(data_dir.path(), &copy);
    assert!(
        output.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("backed up"), "{printed}");
    assert!(
        api.done_chunks(second).await < CHUNKS as i64,
        "the job ended before the copy"
    );
    // The master went on working through the copy.
    api.wait_progress(second, api.done_chunks(second).await + 1)
        .await;

    // A second copy to the same file is refused, and the first stays whole.
    let again = run_backup(data_dir.path(), &copy);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // Restore: the copy becomes grid.db of a new data directory, served by a new master.
    drop((master, w1, w2));
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&copy, restored.path().join("grid.db")).unwrap();
    let restored_home = Home::Sqlite(restored);
    let (_restored_master, restored_addr) = spawn_server_process(&restored_home, "127.0.0.1:0");
    let api = Api::new(&format!("http://{restored_addr}"), ADMIN_TOKEN);
    let results = api.results(first).await;
    assert_eq!(
        primes_total(&results, 10, None),
        primes_reference(&first_inputs)
    );
    let restored_ws = format!("ws://{restored_addr}/ws");
    let _w3 = spawn_worker(&restored_ws, 1, &identities.path().join("w3.id"));
    let _w4 = spawn_worker(&restored_ws, 1, &identities.path().join("w4.id"));
    let finished = api.wait_finished(second, Duration::from_secs(180)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let results = api.results(second).await;
    assert_eq!(
        primes_total(&results, CHUNKS, None),
        primes_reference(&second_inputs)
    );
}

#[test]
fn json_logs_are_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_grid-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .env("GRID_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (first_line, line_read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stderr).lines().next();
        let _ = first_line.send(line);
    });
    let line = line_read.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let line = line
        .expect("no log line on stderr within 30 s")
        .expect("stderr closed")
        .unwrap();
    let parsed: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert!(
        parsed.get("level").is_some() && parsed.get("fields").is_some(),
        "{parsed}"
    );
    // The embedded deployment keeps a generated admin token, readable by its owner only.
    let token = dir.path().join("admin-token");
    assert!(token.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "admin-token must not be readable by others"
        );
    }
}

/// A multi-host database URL whose hosts are all down: the master refuses to start with an
/// error that names the hosts and shows no password (in the user information or as a
/// parameter).
#[test]
fn an_unreachable_multi_host_database_is_named_without_its_password() {
    let data = tempfile::tempdir().unwrap();
    let closed = [
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    let ports: Vec<u16> = closed
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(closed);
    let url = format!(
        "postgres://grid:hunter2-user@127.0.0.1:{},127.0.0.1:{}/grid?password=hunter2-param&target_session_attrs=read-write",
        ports[0], ports[1]
    );
    let output = Command::new(target_dir_binary("grid-server"))
        .env("DATABASE_URL", &url)
        .env("GRID_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !printed.contains("hunter2"),
        "a password was printed: {printed}"
    );
    assert!(
        printed.contains(&format!("127.0.0.1:{}", ports[0]))
            && printed.contains(&format!("127.0.0.1:{}", ports[1]))
            && printed.contains("primary"),
        "{printed}"
    );
}
