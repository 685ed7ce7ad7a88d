//! The `grid` binary end to end against a real master (in-process, embedded SQLite) with real
//! native workers: tokens, submitting from a range, a JSON file and NDJSON on stdin, watching
//! a job to the end, downloading results (NDJSON, and Parquet and Arrow files read by DuckDB
//! and pyarrow), cancelling, and every kind of error report.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::ErrorKind;

use common::{ADMIN_TOKEN, Grid, finish, grid, grid_command};
use serde_json::Value;

/// π(10^6).
const PRIMES_BELOW_A_MILLION: u64 = 78_498;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primes_job_from_submit_to_verified_results() {
    let master = Grid::start(2).await;
    let submitter = master.grid(ADMIN_TOKEN, &["token", "create"]).await;
    let token = submitter.ok().to_owned();
    assert!(
        token.starts_with("grid_") && !token.contains('\n'),
        "{token}"
    );

    let submitted = master
        .grid(
            &token,
            &[
                "submit",
                "--kernel",
                "primes",
                "--range",
                "0..1000000",
                "--chunks",
                "10",
                "--redundancy",
                "2",
                "--name",
                "cli-e2e",
            ],
        )
        .await;
    let id = submitted.ok().to_owned();
    assert!(id.parse::<i64>().is_ok(), "only the id on stdout: {id:?}");
    assert_eq!(submitted.stderr, "");

    let status = master
        .grid(&token, &["status", &id, "--watch", "--interval", "0.1"])
        .await;
    let summary = status.ok();
    assert!(
        summary.starts_with(&format!("job {id} (cli-e2e): done, 10/10 chunks")),
        "{summary}"
    );
    assert!(summary.contains("redundancy 2"), "{summary}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("results.ndjson");
    let results = master
        .grid(&token, &["results", &id, "-o", file.to_str().unwrap()])
        .await;
    assert_eq!(results.ok(), "");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 10, "{text}");
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], index, "{line}");
        assert_eq!(line["agreeing"], 2, "{line}");
    }
    let total: u64 = lines
        .iter()
        .map(|line| line["output"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, PRIMES_BELOW_A_MILLION);

    // On stdout: the same bytes.
    let results = master.grid(&token, &["results", &id]).await;
    assert_eq!(results.code, 0, "{results:#?}");
    assert_eq!(results.stdout, text);

    let jobs = master.grid(&token, &["jobs"]).await;
    let table = jobs.ok();
    let row = table
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("job {id} missing from\n{table}"));
    for cell in ["done", "10/10", "primes", "cli-e2e"] {
        assert!(row.contains(cell), "{row}");
    }
    assert!(table.starts_with("ID"), "{table}");

    let cancel = master.grid(&token, &["cancel", &id]).await;
    assert_eq!(
        cancel.failed(1),
        format!("error: job {id} is already done and cannot be cancelled (conflict, HTTP 409)\n")
    );
    assert_eq!(cancel.stdout, "");

    let json = master.grid(&token, &["status", &id, "--json"]).await;
    let job: Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(job["state"], "done");
    assert_eq!(job["chunks"]["done"], 10);

    master.stop().await;
}

/// The test suite's Python (with pyarrow and duckdb), or a clear failure.
fn python() -> std::path::PathBuf {
    match std::env::var_os("GRID_PYTHON") {
        Some(python) => python.into(),
        None => panic!(
            "GRID_PYTHON is not set: this test reads the results with DuckDB and pyarrow; run \
             it through `cargo xtask test` (which installs xtask/requirements-test.txt into a \
             virtual environment and sets GRID_PYTHON)"
        ),
    }
}

/// DuckDB's `sum(count)` and `count(*)` of a Parquet file, and pyarrow's of an Arrow IPC
/// stream, as `[sum, rows]`.
const SUMS: &str = r#"
import json, sys, duckdb, pyarrow as pa
parquet, arrow = sys.argv[1], sys.argv[2]
by_duckdb = duckdb.execute(
    "SELECT sum(count)::BIGINT, count(*) FROM read_parquet(?)", [parquet]).fetchone()
with pa.ipc.open_stream(arrow) as reader:
    table = reader.read_all()
by_pyarrow = [sum(table.column("count").to_pylist()), table.num_rows]
print(json.dumps({"duckdb": list(by_duckdb), "pyarrow": by_pyarrow}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_as_parquet_and_arrow_files_are_read_by_duckdb_and_pyarrow() {
    let master = Grid::start(2).await;
    let submitted = master
        .grid(
            ADMIN_TOKEN,
            &[
                "submit",
                "--kernel",
                "primes",
                "--range",
                "0..1000000",
                "--chunks",
                "10",
            ],
        )
        .await;
    let id = submitted.ok().to_owned();
    master
        .grid(
            ADMIN_TOKEN,
            &["status", &id, "--watch", "--interval", "0.1"],
        )
        .await
        .ok();

    let dir = tempfile::tempdir().unwrap();
    // `--format parquet` says it; a `.arrows` file says it by its extension.
    let parquet = dir.path().join("results.out");
    let run = master
        .grid(
            ADMIN_TOKEN,
            &[
                "results",
                &id,
                "--format",
                "parquet",
                "-o",
                parquet.to_str().unwrap(),
            ],
        )
        .await;
    assert_eq!(run.ok(), "");
    assert!(std::fs::read(&parquet).unwrap().starts_with(b"PAR1"));
    let arrow = dir.path().join("results.arrows");
    let run = master
        .grid(
            ADMIN_TOKEN,
            &["results", &id, "-o", arrow.to_str().unwrap()],
        )
        .await;
    assert_eq!(run.ok(), "");

    let output = std::process::Command::new(python())
        .arg("-c")
        .arg(SUMS)
        .arg(&parquet)
        .arg(&arrow)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sums: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        sums,
        serde_json::json!({
            "duckdb": [PRIMES_BELOW_A_MILLION, 10],
            "pyarrow": [PRIMES_BELOW_A_MILLION, 10],
        })
    );

    // A format the CLI does not know is refused before anything is sent.
    let run = master
        .grid(ADMIN_TOKEN, &["results", &id, "--format", "csv"])
        .await;
    assert!(run.failed(2).contains("invalid value 'csv'"), "{run:#?}");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inputs_from_a_json_file_and_ndjson_on_stdin_and_cancelling() {
    // No workers: jobs stay queued until cancelled.
    let master = Grid::start(0).await;
    let url = master.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inputs.json");
    std::fs::write(&file, r#"[{"n": 1}, {"n": 2}, {"n": 3}]"#).unwrap();

    let from_file = master
        .grid(
            ADMIN_TOKEN,
            &[
                "submit",
                "--kernel",
                "echo",
                "--inputs",
                file.to_str().unwrap(),
                "--priority",
                "-5",
            ],
        )
        .await;
    let first = from_file.ok().to_owned();
    let json = master
        .grid(ADMIN_TOKEN, &["status", &first, "--json"])
        .await;
    let job: Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(job["chunks"]["total"], 3);
    assert_eq!(job["priority"], -5);
    assert_eq!(job["state"], "queued");

    let ndjson = b"\n{\"n\": 1}\r\n\n{\"n\": 2}\n";
    let from_stdin = grid(
        &url,
        Some(ADMIN_TOKEN),
        &[
            "submit", "--kernel", "echo", "--inputs", "-", "--name", "stdin",
        ],
        Some(ndjson),
    )
    .await;
    let second = from_stdin.ok().to_owned();
    let status = master.grid(ADMIN_TOKEN, &["status", &second]).await;
    assert!(
        status
            .ok()
            .starts_with(&format!("job {second} (stdin): queued, 0/2 chunks")),
        "{status:#?}"
    );

    // A watcher follows the job until it is cancelled, then exits 3.
    let watch_args = ["status", second.as_str(), "--watch", "--interval", "0.1"];
    let watcher = grid_command(&url, Some(ADMIN_TOKEN), &watch_args)
        .spawn()
        .unwrap();
    let cancel = master.grid(ADMIN_TOKEN, &["cancel", &second]).await;
    assert_eq!(
        cancel.ok(),
        format!("job {second} (stdin): cancelled, 0/2 chunks")
    );
    let watched = finish(watcher, &watch_args).await;
    assert_eq!(
        watched.failed(3),
        format!("error: job {second} ended cancelled\n")
    );
    assert!(watched.stdout.contains("cancelled"), "{watched:#?}");

    let cancel = master.grid(ADMIN_TOKEN, &["cancel", &first]).await;
    cancel.ok();
    let status = master.grid(ADMIN_TOKEN, &["status", &first]).await;
    status.failed(3);

    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_errors_show_the_message_the_code_and_the_status() {
    let master = Grid::start(0).await;

    let bad_token = master.grid("not-a-token", &["jobs"]).await;
    assert_eq!(
        bad_token.failed(1),
        "error: a valid bearer token is required (unauthorized, HTTP 401)\n"
    );

    let token = master.grid(ADMIN_TOKEN, &["token", "create"]).await;
    let submitter = token.ok().to_owned();
    let forbidden = master.grid(&submitter, &["token", "create"]).await;
    assert_eq!(
        forbidden.failed(1),
        "error: only the admin token may create tokens (forbidden, HTTP 403)\n"
    );

    let unknown_kernel = master
        .grid(
            &submitter,
            &[
                "submit", "--kernel", "nope", "--range", "0..10", "--chunks", "2",
            ],
        )
        .await;
    let stderr = unknown_kernel.failed(1);
    assert!(
        stderr.starts_with("error: unknown kernel `nope`"),
        "{stderr}"
    );
    assert!(stderr.ends_with("(unknown_kernel, HTTP 422)\n"), "{stderr}");

    let out_of_range = master
        .grid(
            &submitter,
            &[
                "submit",
                "--kernel",
                "primes",
                "--range",
                "0..10",
                "--chunks",
                "2",
                "--redundancy",
                "9",
            ],
        )
        .await;
    assert_eq!(
        out_of_range.failed(1),
        "error: redundancy must be between 1 and 5, got 9 (invalid_field, HTTP 422)\n"
    );

    let missing = master.grid(&submitter, &["status", "999999"]).await;
    assert_eq!(
        missing.failed(1),
        "error: job not found (not_found, HTTP 404)\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("results.ndjson");
    let results = master
        .grid(
            &submitter,
            &["results", "999999", "-o", file.to_str().unwrap()],
        )
        .await;
    results.failed(1);
    assert!(!file.exists(), "no results file for a failed download");

    let no_token = grid(&master.url(), None, &["jobs"], None).await;
    assert_eq!(
        no_token.failed(2),
        "error: no API token: pass --token or set GRID_TOKEN\n"
    );

    master.stop().await;
}

#[tokio::test]
async fn bad_command_lines_are_refused_without_contacting_the_master() {
    // A listener nobody should connect to: whatever `grid` sends would wait in its backlog.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let bad_ndjson = dir.path().join("bad.ndjson");
    std::fs::write(&bad_ndjson, "{\"n\": 1}\n{\"n\": }\n").unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    let not_wasm = dir.path().join("module.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let missing = dir.path().join("missing.json");

    let submit = ["submit", "--kernel", "primes"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--range", "10..5", "--chunks", "2"],
            "the range 10..5 is empty",
        ),
        (vec!["--range", "0..1e6", "--chunks", "2"], "expected A..B"),
        (
            vec!["--range", "0..10", "--chunks", "11"],
            "cannot split 0..10 (10 values) into 11 chunks",
        ),
        (
            vec!["--range", "0..10", "--chunks", "0"],
            "--chunks must be at least 1",
        ),
        (vec!["--range", "0..10"], "--chunks"),
        (
            vec!["--inputs", bad_ndjson.to_str().unwrap()],
            "line 2, column 7: expected value",
        ),
        (vec!["--inputs", empty.to_str().unwrap()], "holds no inputs"),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = submit.iter().copied().chain(extra).collect();
        let run = grid(&url, Some("token"), &args, None).await;
        let stderr = run.failed(2);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(run.stdout, "", "{args:?}");
    }
    let missing_file = grid(
        &url,
        Some("token"),
        &[
            "submit",
            "--kernel",
            "echo",
            "--inputs",
            missing.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(
        missing_file.failed(1).contains("missing.json"),
        "{missing_file:#?}"
    );
    let upload = grid(
        &url,
        Some("token"),
        &["upload", not_wasm.to_str().unwrap()],
        None,
    )
    .await;
    assert!(
        upload.failed(2).contains("not a WebAssembly binary module"),
        "{upload:#?}"
    );
    let bad_url = grid("ftp://example", Some("token"), &["jobs"], None).await;
    assert!(bad_url.failed(2).contains("invalid --url"), "{bad_url:#?}");

    match listener.accept() {
        Err(error) if error.kind() == ErrorKind::WouldBlock => {}
        other => panic!("grid contacted the master: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_module_from_upload_to_verified_results() {
    let master = Grid::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    // Echoes its input: the output of each chunk is its input.
    let echo = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "grid_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "grid_run") (param $ptr i32) (param $len i32) (result i64)
               (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
                       (i64.extend_i32_u (local.get $len)))))"#,
    )
    .unwrap();
    let module = dir.path().join("echo.wasm");
    std::fs::write(&module, &echo).unwrap();
    let uploaded = master
        .grid(ADMIN_TOKEN, &["upload", module.to_str().unwrap()])
        .await;
    let id = uploaded.ok().to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    let inputs = dir.path().join("inputs.json");
    std::fs::write(&inputs, r#"[{"b": 2, "a": 1}, [true, null], "x"]"#).unwrap();
    let submitted = master
        .grid(
            ADMIN_TOKEN,
            &[
                "submit",
                "--module",
                &id,
                "--inputs",
                inputs.to_str().unwrap(),
                "--redundancy",
                "2",
                "--timeout-ms",
                "5000",
                "--max-memory-mb",
                "8",
            ],
        )
        .await;
    let job = submitted.ok().to_owned();
    let status = master
        .grid(
            ADMIN_TOKEN,
            &["status", &job, "--watch", "--interval", "0.1"],
        )
        .await;
    assert!(status.ok().contains("done, 3/3 chunks"), "{status:#?}");
    let results = master.grid(ADMIN_TOKEN, &["results", &job]).await;
    let outputs: Vec<Value> = results
        .ok()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["output"].clone())
        .collect();
    assert_eq!(
        outputs,
        vec![
            serde_json::json!({"a": 1, "b": 2}),
            serde_json::json!([true, null]),
            serde_json::json!("x"),
        ]
    );

    // A module the master refuses: the reason, and exit code 1.
    let importing = wat::parse_str(r#"(module (import "env" "f" (func)))"#).unwrap();
    let refused = dir.path().join("importing.wasm");
    std::fs::write(&refused, importing).unwrap();
    let run = master
        .grid(ADMIN_TOKEN, &["upload", refused.to_str().unwrap()])
        .await;
    let stderr = run.failed(1);
    assert!(stderr.contains("imports `env`.`f`"), "{stderr}");
    assert!(stderr.contains("invalid_module, HTTP 422"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_master_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let run = grid(&url, Some("token"), &["jobs"], None).await;
    let stderr = run.failed(1);
    assert!(
        stderr.starts_with(&format!("error: cannot reach {url}/api/v1/jobs: ")),
        "{stderr}"
    );
    assert!(stderr.contains("refused"), "{stderr}");
}
