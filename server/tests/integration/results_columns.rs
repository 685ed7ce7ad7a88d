//! Results as columns: `GET /api/v1/jobs/{id}/results` as Parquet and as an Arrow IPC stream,
//! of jobs computed by real `grid-worker` processes, read back by DuckDB and pyarrow: the sum
//! of a `primes` job's counts is π(N); typed columns for outputs of one shape, the JSON text
//! for mixed ones and for later rows that do not fit; failed chunks carry their error; a job
//! of several pages is written in several row groups; `?format=` and `Accept` choose the
//! encoding. Python comes from `GRID_PYTHON` (`cargo xtask test` sets it).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::modules::abi_module;
use common::{
    ADMIN_TOKEN, Api, Backend, InProcessServer, primes_inputs, primes_reference, spawn_worker,
};
use serde_json::{Value, json};

on_both_backends!(
    a_primes_download_is_summed_by_duckdb_to_pi_of_n,
    mixed_outputs_are_json_text_and_failed_chunks_carry_their_error,
    a_job_of_several_pages_is_streamed_in_row_groups,
    the_format_is_negotiated_and_an_unknown_one_refused,
);

const PARQUET: &str = "application/vnd.apache.parquet";
const ARROW: &str = "application/vnd.apache.arrow.stream";
const NDJSON: &str = "application/x-ndjson";

/// The test suite's Python (with pyarrow and duckdb), or a clear failure.
fn python() -> PathBuf {
    match std::env::var_os("GRID_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => panic!(
            "GRID_PYTHON is not set: this test reads Parquet and Arrow files with pyarrow and \
             DuckDB; run it through `cargo xtask test` (which installs \
             xtask/requirements-test.txt into a virtual environment and sets GRID_PYTHON)"
        ),
    }
}

/// Run a Python script with arguments; its standard output is one JSON value.
fn run_python(script: &str, args: &[&Path]) -> Value {
    let output = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A Parquet file (`parquet PATH`) or an Arrow IPC stream (`arrow PATH`) read by pyarrow: its
/// schema as `[name, type, nullable]`, its rows, and its row groups or record batches.
const DESCRIBE: &str = r#"
import json, sys, pyarrow as pa, pyarrow.parquet as pq
kind, path = sys.argv[1], sys.argv[2]
if kind == "parquet":
    file = pq.ParquetFile(path)
    table = file.read()
    parts = file.num_row_groups
else:
    with pa.ipc.open_stream(path) as reader:
        batches = list(reader)
        table = pa.Table.from_batches(batches, schema=reader.schema)
    parts = len(batches)
print(json.dumps({
    "schema": [[f.name, str(f.type), f.nullable] for f in table.schema],
    "rows": table.to_pylist(),
    "parts": parts,
}))
"#;

fn describe(kind: &str, path: &Path) -> Value {
    run_python(DESCRIBE, &[Path::new(kind), path])
}

/// DuckDB over a Parquet file: the sum of its `count` column and what else it holds.
const DUCKDB_SUM: &str = r#"
import json, sys, duckdb
path = sys.argv[1]
total, rows, low, high, errors, texts = duckdb.execute(
    "SELECT sum(count)::BIGINT, count(*), min(agreeing), max(agreeing), count(error), "
    "count(output) FROM read_parquet(?)", [path]).fetchone()
print(json.dumps({"sum": total, "rows": rows, "agreeing": [low, high], "errors": errors,
                  "texts": texts}))
"#;

/// `GET /api/v1/jobs/{job}/results{query}` with an optional `Accept`: status, content type
/// and body.
async fn download(
    server: &InProcessServer,
    job: i64,
    query: &str,
    accept: Option<&str>,
) -> (u16, String, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/jobs/{job}/results{query}",
            server.http()
        ))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

/// Download into `dir/name`, checking the content type; the file's path.
async fn download_to(
    server: &InProcessServer,
    job: i64,
    query: &str,
    accept: Option<&str>,
    expected_type: &str,
    path: PathBuf,
) -> PathBuf {
    let (status, content_type, bytes) = download(server, job, query, accept).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(content_type, expected_type);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn schema(columns: &[(&str, &str, bool)]) -> Value {
    Value::Array(
        columns
            .iter()
            .map(|(name, kind, nullable)| json!([name, kind, nullable]))
            .collect(),
    )
}

/// The schema of a file whose outputs are JSON text.
fn json_text_schema() -> Value {
    schema(&[
        ("index", "int32", false),
        ("output", "string", true),
        ("agreeing", "int32", true),
        ("error", "string", true),
    ])
}

async fn a_primes_download_is_summed_by_duckdb_to_pi_of_n(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&server.ws(), 2, &dir.path().join("w1.id"));
    let _w2 = spawn_worker(&server.ws(), 2, &dir.path().join("w2.id"));
    let inputs = primes_inputs(0, 2_000_000, 16);
    let job = api
        .submit(json!({"kernel": "primes", "inputs": inputs, "redundancy": 2}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "done", "{finished}");
    let pi = primes_reference(&inputs);
    assert_eq!(pi, 148_933, "π(2·10^6)");

    // Parquet by `?format=`, summed by DuckDB.
    let parquet = download_to(
        &server,
        job,
        "?format=parquet",
        None,
        PARQUET,
        dir.path().join("results.parquet"),
    )
    .await;
    let summary = run_python(DUCKDB_SUM, &[&parquet]);
    assert_eq!(
        summary,
        json!({"sum": pi, "rows": 16, "agreeing": [2, 2], "errors": 0, "texts": 0})
    );

    // The same results as an Arrow IPC stream, by `Accept`: typed columns, every row as the
    // NDJSON line says.
    let arrow = download_to(
        &server,
        job,
        "",
        Some(ARROW),
        ARROW,
        dir.path().join("results.arrows"),
    )
    .await;
    let read = describe("arrow", &arrow);
    let typed = schema(&[
        ("index", "int32", false),
        ("count", "int64", true),
        ("output", "string", true),
        ("agreeing", "int32", true),
        ("error", "string", true),
    ]);
    assert_eq!(read["schema"], typed);
    let expected: Vec<Value> = api
        .results(job)
        .await
        .iter()
        .map(|line| {
            json!({"index": line["index"], "count": line["output"]["count"], "output": null,
                   "agreeing": line["agreeing"], "error": null})
        })
        .collect();
    assert_eq!(read["rows"], Value::Array(expected));
    // Parquet holds the same schema and rows.
    let read = describe("parquet", &parquet);
    assert_eq!(read["schema"], typed);
    assert_eq!(read["rows"], describe("arrow", &arrow)["rows"]);
    server.stop().await;
}

async fn mixed_outputs_are_json_text_and_failed_chunks_carry_their_error(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&server.ws(), 2, &dir.path().join("w1.id"));
    let _w2 = spawn_worker(&server.ws(), 2, &dir.path().join("w2.id"));

    // Outputs of different shapes: one JSON text column, each output's canonical text.
    let inputs = json!([{"a": 1}, [1, 2], "x", 3.5, {"b": {"c": true}}, null, {"a": 2}]);
    let job = api
        .submit(json!({"kernel": "echo", "inputs": inputs, "redundancy": 2}))
        .await;
    let outputs = api.outputs(job, 2).await;
    assert_eq!(Value::Array(outputs), inputs);
    let arrow = download_to(
        &server,
        job,
        "?format=arrow",
        None,
        ARROW,
        dir.path().join("mixed.arrows"),
    )
    .await;
    let read = describe("arrow", &arrow);
    assert_eq!(read["schema"], json_text_schema());
    let texts = [
        r#"{"a":1}"#,
        "[1,2]",
        r#""x""#,
        "3.5",
        r#"{"b":{"c":true}}"#,
        "null",
        r#"{"a":2}"#,
    ];
    let expected: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"index": index, "output": text, "agreeing": 2, "error": null}))
        .collect();
    assert_eq!(read["rows"], Value::Array(expected));

    // A module that traps on the input `0` and echoes any other: the failed chunks have their
    // error and nulls, the others typed columns.
    let module = api
        .upload_module(abi_module(
            "(if (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 48)) (then unreachable))
             (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                     (i64.extend_i32_u (local.get $len)))",
        ))
        .await;
    let job = api
        .submit(json!({
            "module": module,
            "inputs": [{"n": 1, "s": "a"}, 0, {"n": 2, "s": null}, 0],
            "redundancy": 2,
        }))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(120)).await;
    assert_eq!(finished["state"], "failed", "{finished}");
    let lines = api.results(job).await;
    let error = lines[1]["error"].as_str().unwrap().to_owned();
    assert!(error.starts_with("trap: unreachable"), "{error}");
    assert_eq!(lines[3]["error"], error);
    let parquet = download_to(
        &server,
        job,
        "",
        Some(PARQUET),
        PARQUET,
        dir.path().join("failed.parquet"),
    )
    .await;
    let read = describe("parquet", &parquet);
    assert_eq!(
        read["schema"],
        schema(&[
            ("index", "int32", false),
            ("n", "int64", true),
            ("s", "string", true),
            ("output", "string", true),
            ("agreeing", "int32", true),
            ("error", "string", true),
        ])
    );
    assert_eq!(
        read["rows"],
        json!([
            {"index": 0, "n": 1, "s": "a", "output": null, "agreeing": 2, "error": null},
            {"index": 1, "n": null, "s": null, "output": null, "agreeing": null, "error": error},
            {"index": 2, "n": 2, "s": null, "output": null, "agreeing": 2, "error": null},
            {"index": 3, "n": null, "s": null, "output": null, "agreeing": null, "error": error},
        ])
    );
    server.stop().await;
}

/// The inputs (and, through `echo`, outputs) of the large job: 4,000 objects of one shape
/// (`x` sometimes an integer: still a float64 column), then rows that do or do not fit it.
fn large_job_inputs() -> Vec<Value> {
    (0..4_500u64)
        .map(|k| {
            let x = if k % 1_000 == 7 {
                json!(k)
            } else {
                json!(k as f64 + 0.5)
            };
            let shaped =
                json!({"i": k, "x": x, "even": k % 2 == 0, "name": format!("n{k}"), "none": null});
            match k {
                4_000 => json!({"i": 1.5, "x": 0.5, "even": true, "name": "a", "none": null}),
                4_001 => json!({"i": 9_223_372_036_854_775_808u64, "x": 0.5, "even": true,
                                "name": "a", "none": null}),
                4_002 => json!({"i": 1, "x": 9_007_199_254_740_993u64, "even": true,
                                "name": "a", "none": null}),
                // Fits: `none` was null in the first page, so it is a text column.
                4_003 => json!({"i": 1, "x": 0.5, "even": true, "name": "a", "none": "now text"}),
                4_004 => json!({"i": 1, "x": 0.5, "even": true, "name": "a", "none": 5}),
                4_005 => json!({"i": 1, "x": 0.5, "even": true, "name": "a"}),
                4_006 => json!({"i": 1, "x": 0.5, "even": true, "name": "a", "none": null,
                                "extra": 1}),
                4_007 => json!([k]),
                _ => shaped,
            }
        })
        .collect()
}

async fn a_job_of_several_pages_is_streamed_in_row_groups(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let _w1 = spawn_worker(&server.ws(), 2, &dir.path().join("w1.id"));
    let _w2 = spawn_worker(&server.ws(), 2, &dir.path().join("w2.id"));
    let inputs = large_job_inputs();
    let job = api
        .submit(json!({"kernel": "echo", "inputs": inputs, "redundancy": 1}))
        .await;
    let finished = api.wait_finished(job, Duration::from_secs(300)).await;
    assert_eq!(finished["state"], "done", "{finished}");

    let parquet = download_to(
        &server,
        job,
        "?format=parquet",
        None,
        PARQUET,
        dir.path().join("large.parquet"),
    )
    .await;
    let read = describe("parquet", &parquet);
    // One row group per page of results (2,000 at most): the file was written page by page.
    let row_groups = read["parts"].as_u64().unwrap();
    assert!(row_groups > 1, "{row_groups} row group(s)");
    assert_eq!(
        read["schema"],
        schema(&[
            ("index", "int32", false),
            ("even", "bool", true),
            ("i", "int64", true),
            ("name", "string", true),
            ("none", "string", true),
            ("x", "double", true),
            ("output", "string", true),
            ("agreeing", "int32", true),
            ("error", "string", true),
        ])
    );
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len(), inputs.len());
    let lines = api.results(job).await;
    assert_eq!(lines.len(), inputs.len());
    let does_not_fit = [4_000, 4_001, 4_002, 4_004, 4_005, 4_006, 4_007];
    for (k, ((row, input), line)) in rows.iter().zip(&inputs).zip(&lines).enumerate() {
        assert_eq!(row["index"], k, "{row}");
        assert_eq!(&line["output"], input, "{line}");
        assert_eq!(row["agreeing"], line["agreeing"], "{row}");
        assert_eq!(row["error"], Value::Null, "{row}");
        if does_not_fit.contains(&k) {
            // Kept whole, as JSON text; the typed columns are null.
            let text = row["output"].as_str().unwrap();
            assert_eq!(
                &serde_json::from_str::<Value>(text).unwrap(),
                input,
                "{row}"
            );
            for column in ["even", "i", "name", "none", "x"] {
                assert_eq!(row[column], Value::Null, "{row}");
            }
        } else {
            assert_eq!(row["output"], Value::Null, "{row}");
            assert_eq!(row["i"], input["i"], "{row}");
            assert_eq!(row["even"], input["even"], "{row}");
            assert_eq!(row["name"], input["name"], "{row}");
            assert_eq!(row["none"], input["none"], "{row}");
            assert_eq!(row["x"].as_f64(), input["x"].as_f64(), "{row}");
        }
    }

    // The Arrow stream of the same job: one record batch per page, the same rows.
    let arrow = download_to(
        &server,
        job,
        "?format=arrow",
        None,
        ARROW,
        dir.path().join("large.arrows"),
    )
    .await;
    let streamed = describe("arrow", &arrow);
    assert_eq!(streamed["parts"], row_groups);
    assert_eq!(streamed["schema"], read["schema"]);
    assert_eq!(streamed["rows"], read["rows"]);
    server.stop().await;
}

async fn the_format_is_negotiated_and_an_unknown_one_refused(backend: Backend) {
    // No workers: the job's results are empty, which every format can say.
    let server = InProcessServer::start(backend).await;
    let api = Api::new(&server.http(), ADMIN_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let job = api
        .submit(json!({"kernel": "echo", "inputs": [1, 2]}))
        .await;

    let arrow_preferred = format!("{PARQUET};q=0.5, {ARROW}");
    let parquet_first = format!("{PARQUET}, */*;q=0.1");
    for (query, accept, expected) in [
        ("", None, NDJSON),
        ("", Some(PARQUET), PARQUET),
        ("", Some(ARROW), ARROW),
        ("", Some("text/html, */*;q=0.8"), NDJSON),
        ("", Some("application/json"), NDJSON),
        ("", Some(arrow_preferred.as_str()), ARROW),
        ("", Some(parquet_first.as_str()), PARQUET),
        ("?format=ndjson", Some(PARQUET), NDJSON),
        ("?format=arrow", Some(PARQUET), ARROW),
        ("?format=Parquet", None, PARQUET),
    ] {
        let (status, content_type, _) = download(&server, job, query, accept).await;
        assert_eq!(status, 200, "{query} {accept:?}");
        assert_eq!(content_type, expected, "{query} {accept:?}");
    }

    // An empty job is a valid file with the JSON text schema and no rows.
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/jobs/{job}/results", server.http()))
        .query(&[("format", "parquet")])
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-disposition"],
        format!("attachment; filename=\"job-{job}-results.parquet\"").as_str()
    );
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    let path = dir.path().join("empty.parquet");
    std::fs::write(&path, &bytes).unwrap();
    let read = describe("parquet", &path);
    assert_eq!(read["schema"], json_text_schema());
    assert_eq!(read["rows"], json!([]));
    let path = download_to(
        &server,
        job,
        "?format=arrow",
        None,
        ARROW,
        dir.path().join("empty.arrows"),
    )
    .await;
    let read = describe("arrow", &path);
    assert_eq!(read["schema"], json_text_schema());
    assert_eq!(
        (read["parts"].clone(), read["rows"].clone()),
        (json!(0), json!([]))
    );

    // An unknown format is refused with a JSON error that names the choices.
    for query in ["?format=csv", "?format="] {
        let (status, content_type, body) = download(&server, job, query, None).await;
        assert_eq!(status, 422, "{query}");
        assert_eq!(content_type, "application/json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "unknown_format", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("parquet") && message.contains("arrow"),
            "{message}"
        );
    }
    // The job's own answers come first as ever: someone else's job, a missing job, no token.
    let (status, body) = api.post("/api/v1/tokens", &json!({})).await;
    assert_eq!(status, 201, "{body}");
    let other = Api::new(&server.http(), body["token"].as_str().unwrap());
    let response = other
        .client
        .get(format!(
            "{}/api/v1/jobs/{job}/results?format=parquet",
            other.base
        ))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let (status, _, _) = download(&server, job + 1, "?format=parquet", None).await;
    assert_eq!(status, 404);
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/jobs/{job}/results?format=parquet",
            server.http()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    server.stop().await;
}
