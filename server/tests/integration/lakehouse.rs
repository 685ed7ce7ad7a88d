//! Delta Lake sinks over real parts: jobs computed by real `grid-worker` processes, their
//! results appended by the master to Delta tables on the local file system and on an S3
//! server (moto's, started here on a loopback port), read back by PyPI's `deltalake` (delta-rs)
//! and DuckDB. A master killed with SIGKILL during an export leaves the job in the table
//! exactly once after its restart (that job's inputs are uploaded as a Parquet dataset), and a 1,000,000-chunk job is exported
//! with the master process's memory bounded. Python comes from `GRID_PYTHON` (`cargo xtask test` sets it).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    ADMIN_TOKEN, Api, Backend, Home, InProcessServer, Process, memory_kib, primes_inputs,
    primes_reference, reset_peak_memory, spawn_server_process_with, spawn_worker,
};
use grid_server::ServeOptions;
use grid_server::lakehouse::{S3Settings, SinkPolicy, delta};
use serde_json::{Value, json};
use sqlx::Connection;

on_both_backends!(
    finished_jobs_are_appended_to_their_delta_table_once_each,
    a_master_killed_during_an_export_leaves_the_job_in_the_table_once,
);

/// The test suite's Python (with deltalake, duckdb and moto), or a clear failure.
fn python() -> PathBuf {
    match std::env::var_os("GRID_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => panic!(
            "GRID_PYTHON is not set: these tests read Delta tables with PyPI's deltalake and \
             run moto's S3 server; run them through `cargo xtask test` (which installs \
             xtask/requirements-test.txt into a virtual environment and sets GRID_PYTHON)"
        ),
    }
}

/// Reads a Delta table with delta-rs's Python package and DuckDB, and prints what a user
/// would check: the rows per job, distinct chunk indexes per job, the sum of `count` per job
/// (through DuckDB), the columns, and the outputs kept as JSON text.
const READ_TABLE: &str = r#"
import json, os, sys, duckdb
from deltalake import DeltaTable
options = json.loads(sys.argv[2])
dt = DeltaTable(sys.argv[1], storage_options=options or None)
ds = dt.to_pyarrow_dataset()
rows = duckdb.sql("""
    SELECT job_id, count(*) AS n, count(DISTINCT "index") AS d
    FROM ds GROUP BY job_id ORDER BY job_id""").fetchall()
names = ds.schema.names
counts = {}
if "count" in names:
    counts = {str(j): s for j, s in duckdb.sql(
        'SELECT job_id, sum("count") FROM ds GROUP BY job_id').fetchall()}
texts = {}
for j, o in duckdb.sql(
        'SELECT job_id, "output" FROM ds WHERE "output" IS NOT NULL ORDER BY job_id, "index"'
        ).fetchall():
    texts.setdefault(str(j), []).append(o)
labels = []
if "label" in names:
    # Read whole: DuckDB's filter pushdown into a dataset whose older files lack the column
    # does not filter (seen with duckdb 1.x and pyarrow datasets).
    table = dt.to_pyarrow_table(columns=["index", "label"]).to_pylist()
    labels = [r["label"] for r in sorted(table, key=lambda r: r["index"]) if r["label"] is not None]
print(json.dumps({
    "jobs": {str(j): {"rows": n, "distinct": d} for j, n, d in rows},
    "counts": counts, "texts": texts, "labels": labels, "columns": names,
    "version": dt.version(),
}), flush=True)
# Leave without running the native libraries' teardown: once in CI, a thread of one of them
# (deltalake, DuckDB or pyarrow) aborted the interpreter's exit ("terminate called without an
# active exception") after everything was read.
os._exit(0)
"#;

fn read_table(uri: &str, options: &Value) -> Value {
    // Twice at most: the reader is native code of three packages, and a crash of theirs (seen
    // once: an abort at the interpreter's exit) is not what these tests are about; a table
    // that cannot be read fails both times.
    let mut failures = Vec::new();
    for _ in 0..2 {
        let output = Command::new(python())
            .arg("-c")
            .arg(READ_TABLE)
            .arg(uri)
            .arg(options.to_string())
            .output()
            .unwrap();
        if output.status.success() {
            return serde_json::from_slice(&output.stdout).unwrap();
        }
        failures.push(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    panic!("reading {uri} failed twice: {failures:#?}");
}

/// The job view once its export has left `pending` (within `within`).
async fn wait_exported(api: &Api, job: i64, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, view) = api.get(&format!("/api/v1/jobs/{job}")).await;
        assert_eq!(status, 200, "{view}");
        if view["export"]["state"] != "pending" {
            return view;
        }
        assert!(
            started.elapsed() < within,
            "job {job}'s export is still pending after {within:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn file_uri(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

async fn finished_jobs_are_appended_to_their_delta_table_once_each(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let roots = vec![root.display().to_string()];
    let policy = SinkPolicy::new(&roots, S3Settings::default()).unwrap();
    let server = InProcessServer::start_with_options(
        backend,
        ServeOptions {
            sinks: policy.clone(),
            ..ServeOptions::default()
        },
    )
    .await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let table = file_uri(&root.join("results"));

    // Sinks outside the roots, or of other schemes, are refused before anything is stored.
    for (sink, code) in [
        ("file:///etc/grid".to_owned(), "sink_not_allowed"),
        (format!("{table}/../../elsewhere"), "sink_not_allowed"),
        ("s3://lake/grid".to_owned(), "sink_not_allowed"),
        ("http://127.0.0.1/table".to_owned(), "invalid_sink"),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/jobs",
                &json!({"kernel": "echo", "inputs": [1], "sink": {"delta": sink}}),
            )
            .await;
        assert_eq!(status, 422, "{sink}: {body}");
        assert_eq!(body["error"]["code"], code, "{sink}: {body}");
    }
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"kernel": "echo", "inputs": [1], "sink": {"delta": table, "x": 1}}),
        )
        .await;
    assert_eq!(status, 422, "unknown sink fields are refused: {body}");

    // A cancelled job is not exported (no worker has joined yet, so it is still queued).
    let cancelled = api
        .submit(json!({"kernel": "echo", "inputs": [1, 2], "sink": {"delta": table}}))
        .await;
    let (status, view) = api.delete(&format!("/api/v1/jobs/{cancelled}")).await;
    assert_eq!(status, 200, "{view}");
    let (_, view) = api.get(&format!("/api/v1/jobs/{cancelled}")).await;
    assert_eq!(view["state"], "cancelled", "{view}");
    assert_eq!(view["export"]["state"], "skipped", "{view}");

    let _w1 = spawn_worker(&server.ws(), 2, &dir.path().join("w1.id"));
    let _w2 = spawn_worker(&server.ws(), 2, &dir.path().join("w2.id"));
    // Three shapes into one table: typed `count` (creates it), plain numbers (kept as JSON
    // text in `output`), and objects adding a `label` column (the schema evolves).
    let inputs = primes_inputs(0, 300_000, 30);
    let primes = api
        .submit(
            json!({"kernel": "primes", "inputs": inputs, "sink": {"delta": format!("{table}/")}}),
        )
        .await;
    let numbers = api
        .submit(json!({"kernel": "echo", "inputs": [10, 20, 30], "sink": {"delta": table}}))
        .await;
    let labelled = api
        .submit(json!({
            "kernel": "echo",
            "inputs": [{"count": 1, "label": "a"}, {"count": 2, "label": "b"}],
            "sink": {"delta": table},
        }))
        .await;
    // Exports run in job order: each job's commit is one table version.
    for job in [primes, numbers, labelled] {
        let view = api.wait_finished(job, Duration::from_secs(120)).await;
        assert_eq!(view["state"], "done", "{view}");
        let view = wait_exported(&api, job, Duration::from_secs(60)).await;
        assert_eq!(view["export"]["state"], "done", "{view}");
        assert_eq!(view["export"]["sink"], table, "the canonical URI: {view}");
        assert!(view["export"]["table_version"].as_i64().is_some(), "{view}");
        assert!(view["export"]["exported_at"].is_string(), "{view}");
    }

    let read = read_table(&table, &json!({}));
    let jobs = &read["jobs"];
    assert_eq!(
        jobs[primes.to_string()],
        json!({"rows": 30, "distinct": 30}),
        "{read}"
    );
    assert_eq!(
        jobs[numbers.to_string()],
        json!({"rows": 3, "distinct": 3}),
        "{read}"
    );
    assert_eq!(
        jobs[labelled.to_string()],
        json!({"rows": 2, "distinct": 2}),
        "{read}"
    );
    assert_eq!(
        read["counts"][primes.to_string()].as_u64(),
        Some(primes_reference(&inputs)),
        "sum(count) over the table is π(300,000): {read}"
    );
    assert_eq!(read["counts"][labelled.to_string()], 3, "{read}");
    assert_eq!(
        read["texts"][numbers.to_string()],
        json!(["10", "20", "30"]),
        "{read}"
    );
    assert_eq!(read["labels"], json!(["a", "b"]), "{read}");
    let columns: Vec<&str> = read["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "job_id", "index", "count", "output", "agreeing", "error", "label"
        ],
        "{read}"
    );

    // An export that runs again after its commit (a master that died before recording it)
    // finds its transaction identifier and appends nothing.
    let again = delta::export_job(server.store.shared(), &policy, primes, &table)
        .await
        .unwrap();
    assert!(again.already, "{again:?}");
    let reread = read_table(&table, &json!({}));
    assert_eq!(reread["jobs"], read["jobs"], "nothing appended twice");
    assert_eq!(reread["version"], read["version"], "no new table version");

    server.stop().await;
}

/// Writes the JSON array of `{start, end}` objects in argv[2] as a Parquet file at argv[1].
const WRITE_RANGES: &str = r#"
import json, sys, pyarrow as pa, pyarrow.parquet as pq
rows = json.loads(sys.argv[2])
pq.write_table(pa.table({
    "start": pa.array([r["start"] for r in rows], pa.int64()),
    "end": pa.array([r["end"] for r in rows], pa.int64()),
}), sys.argv[1])
"#;

/// Creates the bucket `lake` on moto's server at ENDPOINT once it answers.
const CREATE_BUCKET: &str = r#"
import boto3, time
s3 = boto3.client("s3", endpoint_url="ENDPOINT", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
for _ in range(300):
    try:
        s3.create_bucket(Bucket="lake")
        break
    except Exception:
        time.sleep(0.1)
else:
    raise SystemExit("moto did not start")
"#;

/// moto's S3 server on a free loopback port, with the bucket `lake`.
struct S3Server {
    _process: Process,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let process = Process { child };
        let endpoint = format!("http://127.0.0.1:{port}");
        let create = CREATE_BUCKET.replace("ENDPOINT", &endpoint);
        let status = Command::new(python())
            .arg("-c")
            .arg(create)
            .status()
            .unwrap();
        assert!(status.success(), "could not create the bucket on moto");
        S3Server {
            _process: process,
            endpoint,
        }
    }

    /// The storage options Python's deltalake reads the bucket with.
    fn options(&self) -> Value {
        json!({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        })
    }
}

async fn a_master_killed_during_an_export_leaves_the_job_in_the_table_once(backend: Backend) {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(backend).await;
    let flags = [
        "--sink-root",
        "s3://lake/grid",
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-allow-http",
        "--s3-region",
        "us-east-1",
        "--s3-access-key-id",
        "testing",
        "--s3-secret-access-key",
        "testing",
    ];
    let (mut master, addr) = spawn_server_process_with(&home, "127.0.0.1:0", &flags);
    let api = Api::new(&format!("http://{addr}"), ADMIN_TOKEN);
    let ws = format!("ws://{addr}/ws");
    let table = "s3://lake/grid/primes";

    // Credentials and endpoints come from the master: another bucket is refused.
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"kernel": "echo", "inputs": [1], "sink": {"delta": "s3://other/grid"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "sink_not_allowed", "{body}");

    let w1 = spawn_worker(&ws, 2, &dir.path().join("w1.id"));
    let w2 = spawn_worker(&ws, 2, &dir.path().join("w2.id"));
    // The inputs come as a Parquet dataset (one row per chunk), as an analyst would upload them.
    let chunks = 2_000u64;
    let inputs = primes_inputs(0, 2_000_000, chunks);
    let dataset = dir.path().join("ranges.parquet");
    let status = Command::new(python())
        .arg("-c")
        .arg(WRITE_RANGES)
        .arg(&dataset)
        .arg(serde_json::to_string(&inputs).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "pyarrow could not write the dataset");
    let form = reqwest::multipart::Form::new()
        .part(
            "job",
            reqwest::multipart::Part::text(
                json!({"kernel": "primes", "sink": {"delta": table}}).to_string(),
            )
            .mime_str("application/json")
            .unwrap(),
        )
        .part(
            "inputs",
            reqwest::multipart::Part::bytes(std::fs::read(&dataset).unwrap())
                .file_name("ranges.parquet"),
        );
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/jobs"))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let job = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let view = api.wait_finished(job, Duration::from_secs(180)).await;
    assert_eq!(view["state"], "done", "{view}");
    drop((w1, w2));

    // Kill the master as soon as an exporter has claimed the job (attempt 1 counted, the
    // export not recorded): mid-export, or just after its commit.
    let started = Instant::now();
    let landed = loop {
        let (_, view) = api.get(&format!("/api/v1/jobs/{job}")).await;
        if view["export"]["attempts"].as_i64().unwrap_or(0) >= 1 {
            master.kill();
            break view["export"]["state"].as_str().unwrap_or("").to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no export began: {view}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!("the master was killed with the export {landed}");

    let (_master, addr) = spawn_server_process_with(&home, "127.0.0.1:0", &flags);
    let api = Api::new(&format!("http://{addr}"), ADMIN_TOKEN);
    // On PostgreSQL the dead master's claim is taken over once its heartbeat is 10 s stale.
    let view = wait_exported(&api, job, Duration::from_secs(90)).await;
    assert_eq!(view["export"]["state"], "done", "{view}");

    let read = read_table(table, &s3.options());
    assert_eq!(
        read["jobs"][job.to_string()],
        json!({"rows": chunks, "distinct": chunks}),
        "every chunk exactly once: {read}"
    );
    assert_eq!(
        read["counts"][job.to_string()].as_u64(),
        Some(primes_reference(&inputs)),
        "DuckDB's sum over the S3 table is π(2,000,000): {read}"
    );
}

/// A job of 1,000,000 finished chunks (their results written straight into PostgreSQL: the
/// export is what is measured, not the computing) is exported to a `file://` table by a real
/// `grid-server` process with its memory bounded: its peak, over the whole export, stays within
/// 256 MiB above what it held before, whatever the job's size (a page of 2,000 results, one
/// Parquet row group being encoded, a 5 MiB part in flight), and the table holds every chunk once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_chunk_job_is_exported_in_bounded_memory() {
    const CHUNKS: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    std::fs::create_dir_all(&root).unwrap();
    let home = Home::new(Backend::Postgres).await;
    let Home::Postgres(db) = &home else {
        unreachable!("a PostgreSQL home")
    };
    let (master, addr) = spawn_server_process_with(
        &home,
        "127.0.0.1:0",
        &["--sink-root", &root.display().to_string()],
    );
    let pid = master.child.id();
    let api = Api::new(&format!("http://{addr}"), ADMIN_TOKEN);
    let table = file_uri(&root.join("million"));
    // No worker ever joins: the job's chunks are finished below, by hand.
    let job = api
        .submit(json!({"kernel": "echo", "inputs": [{"i": 0}], "sink": {"delta": table}}))
        .await;
    let mut database = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(&format!(
        "INSERT INTO chunks (job_id, idx, priority, input, wanted, state, output, agreeing,
                             finished_at)
         SELECT {job}, g, 0, '{{\"i\":' || g || '}}', 0, 'done', '{{\"i\":' || g || '}}', 2,
                now()
         FROM generate_series(1, {last}) AS g;
         UPDATE chunks SET state = 'done', wanted = 0, output = input, agreeing = 2,
                           finished_at = now()
         WHERE job_id = {job} AND idx = 0",
        last = CHUNKS - 1
    ))
    .execute(&mut database)
    .await
    .unwrap();
    reset_peak_memory(pid);
    let before = memory_kib(pid, "VmRSS:");
    let started = Instant::now();
    sqlx::raw_sql(&format!(
        "UPDATE jobs SET chunk_count = {CHUNKS}, chunks_done = {CHUNKS}, state = 'done',
                         finished_at = now()
         WHERE id = {job}"
    ))
    .execute(&mut database)
    .await
    .unwrap();
    let view = wait_exported(&api, job, Duration::from_secs(600)).await;
    let took = started.elapsed();
    let peak = memory_kib(pid, "VmHWM:");
    assert_eq!(view["export"]["state"], "done", "{view}");
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "exported {CHUNKS} chunks in {:.1} s; the master's resident memory {} MiB before, \
         peak {} MiB (+{growth_mib} MiB)",
        took.as_secs_f64(),
        before / 1024,
        peak / 1024
    );
    assert!(
        growth_mib < 256,
        "the export of {CHUNKS} chunks took the master's memory {growth_mib} MiB above its \
         resident {} MiB",
        before / 1024
    );
    let read = read_table(&table, &json!({}));
    assert_eq!(
        read["jobs"][job.to_string()],
        json!({"rows": CHUNKS, "distinct": CHUNKS}),
        "{}",
        read["jobs"]
    );
    drop(master);
}
