//! Datasets in: jobs whose inputs are the rows of a Parquet file (written by pyarrow), a CSV or
//! an NDJSON file, submitted as multipart forms over real HTTP and computed by real
//! `grid-worker` processes; bad rows refused with their row and column; oversized files
//! refused. Python comes from `GRID_PYTHON` (`cargo xtask test` sets it).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, primes_total, spawn_worker};
use grid_server::limits::Limits;
use serde_json::{Value, json};

on_both_backends!(
    datasets_of_every_format_are_computed_by_real_workers,
    bad_datasets_are_refused_with_their_row_and_column,
    oversized_datasets_are_refused,
);

/// The test suite's Python (with pyarrow), or a clear failure.
fn python() -> PathBuf {
    match std::env::var_os("GRID_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => panic!(
            "GRID_PYTHON is not set: this test writes Parquet files with pyarrow; run it through \
             `cargo xtask test` (which installs xtask/requirements-test.txt into a virtual \
             environment and sets GRID_PYTHON)"
        ),
    }
}

/// The Parquet files of these tests, written by pyarrow into `dir`.
const WRITE_PARQUET: &str = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
step = 125000
pq.write_table(pa.table({
    "start": pa.array([i * step for i in range(8)], pa.int64()),
    "end": pa.array([(i + 1) * step for i in range(8)], pa.int64()),
}), out + "/primes.parquet")
pq.write_table(pa.table({
    "i": pa.array([1, -2, 3], pa.int32()),
    "x": pa.array([0.5, None, 2.25], pa.float64()),
    "ok": pa.array([True, False, None]),
    "s": pa.array(["a", None, "\u00fc"]),
    "cat": pa.array(["u", "v", "u"]).dictionary_encode(),
    "big": pa.array([2**63, 0, 1], pa.uint64()),
}), out + "/typed.parquet", row_group_size=2)
pq.write_table(pa.table({"x": pa.array([1.0, 2.0, float("nan")])}), out + "/nan.parquet")
pq.write_table(pa.table({"t": pa.array([0], pa.timestamp("ms"))}), out + "/timestamps.parquet")
pq.write_table(pa.table({"n": pa.array(list(range(50)), pa.int64())}), out + "/fifty.parquet")
"#;

fn write_parquet_files(dir: &Path) {
    let status = std::process::Command::new(python())
        .arg("-c")
        .arg(WRITE_PARQUET)
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "pyarrow could not write the test files");
}

/// `POST /api/v1/jobs` as a multipart form: `job` fields and an `inputs` file.
async fn submit_dataset(
    server: &InProcessServer,
    job: &Value,
    file_name: &str,
    content_type: Option<&str>,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let mut file = reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_owned());
    if let Some(content_type) = content_type {
        file = file.mime_str(content_type).unwrap();
    }
    let form = reqwest::multipart::Form::new()
        .part(
            "job",
            reqwest::multipart::Part::text(job.to_string())
                .mime_str("application/json")
                .unwrap(),
        )
        .part("inputs", file);
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs", server.http()))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn submitted(server: &InProcessServer, job: &Value, file_name: &str, bytes: Vec<u8>) -> i64 {
    let (status, body) = submit_dataset(server, job, file_name, None, bytes).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().unwrap()
}

fn primes_csv() -> String {
    let mut text = "start,end\n".to_owned();
    for i in 0..8u64 {
        text.push_str(&format!("{},{}\n", i * 125_000, (i + 1) * 125_000));
    }
    text
}

async fn datasets_of_every_format_are_computed_by_real_workers(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    write_parquet_files(dir.path());
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let _w1 = spawn_worker(&server.ws(), 1, &dir.path().join("w1.id"));
    let _w2 = spawn_worker(&server.ws(), 1, &dir.path().join("w2.id"));
    let primes = json!({"kernel": "primes", "redundancy": 2, "name": "pi(10^6) from a dataset"});

    // Parquet written by pyarrow: one chunk per row, π(10^6) = 78,498.
    let bytes = std::fs::read(dir.path().join("primes.parquet")).unwrap();
    let job = submitted(&server, &primes, "primes.parquet", bytes).await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(finished["chunks"]["total"], 8);
    assert_eq!(primes_total(&api.results(job).await, 8, Some(2)), 78_498);

    // The same as CSV.
    let job = submitted(&server, &primes, "primes.csv", primes_csv().into_bytes()).await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(primes_total(&api.results(job).await, 8, Some(2)), 78_498);

    // Typed columns, through the echo kernel: what a chunk got is what it returns.
    let echo = json!({"kernel": "echo", "redundancy": 2});
    let bytes = std::fs::read(dir.path().join("typed.parquet")).unwrap();
    let job = submitted(&server, &echo, "typed.parquet", bytes).await;
    assert_eq!(
        api.outputs(job, 2).await,
        vec![
            json!({"i": 1, "x": 0.5, "ok": true, "s": "a", "cat": "u", "big": 9_223_372_036_854_775_808u64}),
            json!({"i": -2, "x": null, "ok": false, "s": null, "cat": "v", "big": 0}),
            json!({"i": 3, "x": 2.25, "ok": null, "s": "ü", "cat": "u", "big": 1}),
        ]
    );
    let csv = "n,x,ok,name,zip\n1,2.5,true,ada,01234\n,3,false,7,99\n";
    let job = submitted(&server, &echo, "typed.csv", csv.as_bytes().to_vec()).await;
    assert_eq!(
        api.outputs(job, 2).await,
        vec![
            json!({"n": 1, "x": 2.5, "ok": true, "name": "ada", "zip": "01234"}),
            json!({"n": null, "x": 3, "ok": false, "name": "7", "zip": "99"}),
        ]
    );
    let ndjson = "{\"a\": 1, \"b\": [true, null]}\n\n{\"a\": 2.5, \"c\": {\"d\": \"e\"}}\n";
    let job = submitted(&server, &echo, "rows.ndjson", ndjson.as_bytes().to_vec()).await;
    assert_eq!(
        api.outputs(job, 2).await,
        vec![
            json!({"a": 1, "b": [true, null]}),
            json!({"a": 2.5, "c": {"d": "e"}}),
        ]
    );
    server.stop().await;
}

fn assert_refused(status: u16, body: &Value, expected: u16, code: &str, mentions: &[&str]) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for needle in mentions {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
}

async fn bad_datasets_are_refused_with_their_row_and_column(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    write_parquet_files(dir.path());
    let server = InProcessServer::start(backend).await;
    let primes = json!({"kernel": "primes"});
    let echo = json!({"kernel": "echo"});

    // A CSV value of the wrong kind: its row (counted from 1) and its column.
    let csv = "start,end\n0,10\n10,20\n20,2O\n";
    let (status, body) = submit_dataset(&server, &primes, "bad.csv", None, csv.into()).await;
    assert_refused(
        status,
        &body,
        422,
        "invalid_input",
        &["row 3", "column `end`", "2O"],
    );
    // A row the kernel refuses.
    let csv = "start,end\n0,10\n10,5\n";
    let (status, body) = submit_dataset(&server, &primes, "bad.csv", None, csv.into()).await;
    assert_refused(status, &body, 422, "invalid_input", &["row 2", "start"]);
    // A row with a field too few.
    let csv = "start,end\n0,10\n10\n";
    let (status, body) = submit_dataset(&server, &primes, "bad.csv", None, csv.into()).await;
    assert_refused(
        status,
        &body,
        422,
        "invalid_dataset",
        &["row 2", "1 fields"],
    );
    // A NaN in a Parquet float column (JSON cannot hold it).
    let bytes = std::fs::read(dir.path().join("nan.parquet")).unwrap();
    let (status, body) = submit_dataset(&server, &echo, "nan.parquet", None, bytes).await;
    assert_refused(
        status,
        &body,
        422,
        "invalid_input",
        &["row 3", "column `x`", "NaN"],
    );
    // A column type a chunk input cannot hold.
    let bytes = std::fs::read(dir.path().join("timestamps.parquet")).unwrap();
    let (status, body) = submit_dataset(&server, &echo, "t.parquet", None, bytes).await;
    assert_refused(
        status,
        &body,
        422,
        "invalid_dataset",
        &["column `t`", "Timestamp"],
    );
    // Not Parquet at all, though it says so.
    let (status, body) = submit_dataset(
        &server,
        &echo,
        "x.bin",
        Some("application/vnd.apache.parquet"),
        b"not parquet".to_vec(),
    )
    .await;
    assert_refused(status, &body, 422, "invalid_dataset", &["Parquet"]);
    // NDJSON rows must be objects.
    let ndjson = "{\"a\": 1}\n[1, 2]\n";
    let (status, body) = submit_dataset(&server, &echo, "r.ndjson", None, ndjson.into()).await;
    assert_refused(status, &body, 422, "invalid_input", &["row 2", "object"]);
    // A format nobody can tell.
    let (status, body) = submit_dataset(&server, &echo, "rows", None, b"a\n1\n".to_vec()).await;
    assert_refused(status, &body, 422, "invalid_dataset", &[".parquet"]);
    // The job part is checked like a JSON body, and takes no inputs of its own.
    let (status, body) = submit_dataset(
        &server,
        &json!({"kernel": "nope"}),
        "r.csv",
        None,
        b"a\n1\n".to_vec(),
    )
    .await;
    assert_refused(status, &body, 422, "unknown_kernel", &[]);
    let (status, body) = submit_dataset(
        &server,
        &json!({"kernel": "echo", "inputs": [1]}),
        "r.csv",
        None,
        b"a\n1\n".to_vec(),
    )
    .await;
    assert_refused(status, &body, 422, "invalid_field", &["inputs"]);
    // An empty dataset.
    let (status, body) = submit_dataset(&server, &echo, "r.csv", None, b"a\n".to_vec()).await;
    assert_refused(status, &body, 422, "invalid_dataset", &["no rows"]);
    // A form without its file.
    let form = reqwest::multipart::Form::new().text("job", echo.to_string());
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs", server.http()))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_refused(status, &body, 422, "invalid_field", &["`inputs` part"]);

    let jobs = server.store.count("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs, 0, "no refused dataset may leave a job behind");
    server.stop().await;
}

async fn oversized_datasets_are_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    write_parquet_files(dir.path());
    let limits = Limits {
        max_dataset_bytes: 4096,
        max_inputs_per_job: 20,
        max_input_bytes: 64,
        ..Limits::default()
    };
    let server = InProcessServer::start_with(backend, limits).await;
    let echo = json!({"kernel": "echo"});

    // More bytes than a dataset may have: 413 while it is still being received.
    let big = format!("n\n{}", "1\n".repeat(4096));
    let (status, body) = submit_dataset(&server, &echo, "big.csv", None, big.into()).await;
    assert_refused(status, &body, 413, "too_large", &["4096 bytes"]);
    // More rows than a job may have inputs: Parquet knows before reading them, CSV as it goes.
    let bytes = std::fs::read(dir.path().join("fifty.parquet")).unwrap();
    let (status, body) = submit_dataset(&server, &echo, "fifty.parquet", None, bytes).await;
    assert_refused(
        status,
        &body,
        413,
        "too_large",
        &["at most 20 inputs", "50"],
    );
    let rows = format!("n\n{}", "1\n".repeat(21));
    let (status, body) = submit_dataset(&server, &echo, "rows.csv", None, rows.into()).await;
    assert_refused(status, &body, 413, "too_large", &["at most 20 inputs"]);
    // A row over the input size limit.
    let wide = format!("s\nshort\n{}\n", "x".repeat(100));
    let (status, body) = submit_dataset(&server, &echo, "wide.csv", None, wide.into()).await;
    assert_refused(status, &body, 413, "too_large", &["row 2"]);
    let jobs = server.store.count("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs, 0, "no refused dataset may leave a job behind");
    server.stop().await;
}
