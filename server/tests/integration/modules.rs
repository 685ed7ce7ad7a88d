//! Task modules through the REST API and the worker protocol, on both backends: uploads are
//! checked against the ABI and stored by content address, downloads need no token and are
//! cached forever, module jobs are validated and reach workers as `Task::Module`.
//! Running modules on real workers is in `modules_e2e.rs` (native) and `browser.rs`.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::modules::{abi_module, echo, with_import};
use common::{ADMIN_TOKEN, Api, Backend, InProcessServer, Peer};
use grid_protocol::{MasterMessage, Task};
use grid_server::limits::Limits;
use serde_json::{Value, json};

fn assert_error(status: u16, body: &Value, expected_status: u16, code: &str, says: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

on_both_backends!(
    uploads_are_checked_and_content_addressed,
    downloads_need_no_token_and_never_change,
    module_jobs_are_validated_and_assigned_as_modules,
    wasi_command_modules_are_accepted_and_other_imports_named,
    text_output_jobs_reach_workers_with_their_mode
);

async fn uploads_are_checked_and_content_addressed(backend: Backend) {
    let server = InProcessServer::start_with(
        backend,
        Limits {
            max_module_bytes: 4096,
            ..Limits::default()
        },
    )
    .await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let module = echo();

    let (status, body) = admin.upload(module.clone(), "application/wasm").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], grid_task_abi::module_id(&module));
    assert_eq!(body["size"], module.len());
    // Idempotent: the same bytes give the same id and are stored once.
    let (status, again) = admin
        .upload(module.clone(), "application/octet-stream")
        .await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], body["id"]);
    assert_eq!(server.store.count("SELECT count(*) FROM modules").await, 1);

    let (status, body) = admin
        .upload(b"hello, world".to_vec(), "application/wasm")
        .await;
    assert_error(
        status,
        &body,
        422,
        "invalid_module",
        "not a WebAssembly module",
    );
    let mut random = b"\0asm\x01\0\0\0".to_vec();
    random.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8));
    let (status, body) = admin.upload(random, "application/wasm").await;
    assert_error(
        status,
        &body,
        422,
        "invalid_module",
        "invalid WebAssembly module",
    );
    let (status, body) = admin.upload(with_import(), "application/wasm").await;
    assert_error(status, &body, 422, "invalid_module", "imports `env`.`now`");
    let no_alloc = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "grid_run") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    let (status, body) = admin.upload(no_alloc, "application/wasm").await;
    assert_error(
        status,
        &body,
        422,
        "invalid_module",
        "does not export `grid_alloc`",
    );
    // The review's table bomb (H9) has ten tables; at most four are allowed.
    let tables = abi_module(&format!(
        "(i64.const 0)) {} (func $pad",
        "(table 10000000 funcref)".repeat(10)
    ));
    let (status, body) = admin.upload(tables, "application/wasm").await;
    assert_error(
        status,
        &body,
        422,
        "invalid_module",
        "the module defines 10 tables; at most 4 are allowed",
    );
    let (status, body) = admin.upload(Vec::new(), "application/wasm").await;
    assert_error(
        status,
        &body,
        422,
        "invalid_module",
        "not a WebAssembly module",
    );

    // Over the size limit: refused before it is read in full.
    let big = abi_module(&format!(
        r#"(i64.const 0)) (data (i32.const 0) "{}""#,
        "x".repeat(5000)
    ));
    let (status, body) = admin.upload(big, "application/wasm").await;
    assert_error(status, &body, 413, "too_large", "4096 bytes");

    let (status, body) = admin.upload(module.clone(), "application/json").await;
    assert_error(
        status,
        &body,
        415,
        "unsupported_media_type",
        "application/wasm",
    );
    let anonymous = Api::new(&server.http(), "");
    let (status, body) = anonymous.upload(module, "application/wasm").await;
    assert_error(status, &body, 401, "unauthorized", "token");
    // Nothing refused was stored.
    assert_eq!(server.store.count("SELECT count(*) FROM modules").await, 1);
    server.stop().await;
}

async fn downloads_need_no_token_and_never_change(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let module = echo();
    let id = admin.upload_module(module.clone()).await;

    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/modules/{id}", server.http());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/wasm");
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{id}\""));
    assert_eq!(response.bytes().await.unwrap().to_vec(), module);

    let cached = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status().as_u16(), 304);

    for missing in [
        format!("sha256:{}", "0".repeat(64)),
        "nope".to_owned(),
        id.to_uppercase(),
    ] {
        let response = client
            .get(format!("{}/api/v1/modules/{missing}", server.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "{missing}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    server.stop().await;
}

async fn module_jobs_are_validated_and_assigned_as_modules(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let id = admin.upload_module(echo()).await;
    let unknown = format!("sha256:{}", "ab".repeat(32));

    for (body, code, says) in [
        (
            json!({"module": unknown, "inputs": [1]}),
            "unknown_module",
            "no module",
        ),
        (
            json!({"module": "echo.wasm", "inputs": [1]}),
            "unknown_module",
            "not a module id",
        ),
        (
            json!({"module": id, "kernel": "echo", "inputs": [1]}),
            "invalid_field",
            "not both",
        ),
        (json!({"inputs": [1]}), "invalid_field", "a kernel"),
        (
            json!({"module": id, "inputs": [1], "timeout_ms": 5}),
            "invalid_field",
            "timeout_ms must be between 10 and 600000",
        ),
        (
            json!({"module": id, "inputs": [1], "max_memory_mb": 4096}),
            "invalid_field",
            "max_memory_mb must be between 1 and 2048",
        ),
        (
            json!({"module": id, "inputs": [1], "timeout_ms": 120000, "lease_seconds": 60}),
            "invalid_field",
            "lease_seconds must be between 150",
        ),
        (
            json!({"kernel": "echo", "inputs": [1], "timeout_ms": 1000}),
            "invalid_field",
            "module jobs only",
        ),
    ] {
        let (status, error) = admin.post("/api/v1/jobs", &body).await;
        assert_error(status, &error, 422, code, says);
    }
    assert_eq!(server.store.count("SELECT count(*) FROM jobs").await, 0);

    // Module inputs are any JSON: the module decides what it accepts.
    let (status, job) = admin
        .post(
            "/api/v1/jobs",
            &json!({"module": id, "inputs": [{"b": 1, "a": [true]}, "text"], "redundancy": 1}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["module"], id);
    assert!(job.get("kernel").is_none(), "{job}");
    assert_eq!(job["timeout_ms"], 30_000);
    assert_eq!(job["max_memory_mb"], 256);
    assert_eq!(job["lease_seconds"], 300);

    let mut peer = Peer::join(&server.ws(), "module-peer", 2).await;
    for _ in 0..2 {
        match peer.recv().await {
            Some(MasterMessage::Assign { task, .. }) => assert_eq!(
                task,
                Task::Module {
                    id: id.clone(),
                    timeout_ms: 30_000,
                    max_memory_mb: 256,
                    output: grid_protocol::OutputMode::Json,
                }
            ),
            other => panic!("expected a module assignment, got {other:?}"),
        }
    }
    server.stop().await;
}

/// A WASI command module exporting `_start` with `imports` spliced in.
fn wasi_module(imports: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module {imports}
             (memory (export "memory") 1)
             (func (export "_start")))"#
    ))
    .unwrap()
}

async fn wasi_command_modules_are_accepted_and_other_imports_named(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let program = wasi_module(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
           (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#,
    );
    let (status, body) = admin.upload(program.clone(), "application/wasm").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], grid_task_abi::module_id(&program));

    for (imports, says) in [
        (
            r#"(import "env" "now" (func (result i64)))"#,
            "the module imports `env`.`now`; a WASI command module may import only functions \
             of `wasi_snapshot_preview1`",
        ),
        (
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
               (import "wasi_unstable" "fd_read" (func (param i32 i32 i32 i32) (result i32)))"#,
            "the module imports `wasi_unstable`.`fd_read`",
        ),
        (
            r#"(import "wasi_snapshot_preview1" "sock_open" (func (param i32) (result i32)))"#,
            "`wasi_snapshot_preview1`.`sock_open`, which is not a WASI preview 1 function",
        ),
        (
            r#"(import "wasi_snapshot_preview1" "random_get" (func (param i64 i32) (result i32)))"#,
            "imports `wasi_snapshot_preview1`.`random_get` as (param i64 i32) (result i32); it is \
             (param i32 i32) (result i32)",
        ),
        (
            r#"(import "wasi_snapshot_preview1" "table" (table 1 funcref))"#,
            "the module imports `wasi_snapshot_preview1`.`table`",
        ),
    ] {
        let (status, body) = admin.upload(wasi_module(imports), "application/wasm").await;
        assert_error(status, &body, 422, "invalid_module", says);
    }
    // A raw module (no `_start`) still may import nothing at all, WASI included.
    let raw_with_wasi = wat::parse_str(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "grid_alloc") (param i32) (result i32) i32.const 0)
             (func (export "grid_run") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    let (status, body) = admin.upload(raw_with_wasi, "application/wasm").await;
    assert_error(status, &body, 422, "invalid_module", "exports `_start`");
    assert_eq!(server.store.count("SELECT count(*) FROM modules").await, 1);
    server.stop().await;
}

async fn text_output_jobs_reach_workers_with_their_mode(backend: Backend) {
    let server = InProcessServer::start(backend).await;
    let admin = Api::new(&server.http(), ADMIN_TOKEN);
    let (status, body) = admin.upload(wasi_module(""), "application/wasm").await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    for (body, says) in [
        (
            json!({"module": id, "inputs": [1], "output": "yaml"}),
            "output must be `json` or `text`, not `yaml`",
        ),
        (
            json!({"kernel": "echo", "inputs": [1], "output": "text"}),
            "module jobs only",
        ),
    ] {
        let (status, error) = admin.post("/api/v1/jobs", &body).await;
        assert_error(status, &error, 422, "invalid_field", says);
    }
    let (status, job) = admin
        .post(
            "/api/v1/jobs",
            &json!({"module": id, "inputs": [1], "redundancy": 1, "output": "text"}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["output"], "text");
    let (status, plain) = admin
        .post(
            "/api/v1/jobs",
            &json!({"module": id, "inputs": [2], "redundancy": 1}),
        )
        .await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(plain["output"], "json");

    let mut peer = Peer::join(&server.ws(), "text-peer", 2).await;
    let mut modes = Vec::new();
    for _ in 0..2 {
        match peer.recv().await {
            Some(MasterMessage::Assign {
                task: Task::Module { output, .. },
                input,
                ..
            }) => modes.push((input, output)),
            other => panic!("expected a module assignment, got {other:?}"),
        }
    }
    modes.sort_by_key(|(input, _)| input.as_i64());
    assert_eq!(
        modes,
        [
            (json!(1), grid_protocol::OutputMode::Text),
            (json!(2), grid_protocol::OutputMode::Json)
        ]
    );
    server.stop().await;
}
