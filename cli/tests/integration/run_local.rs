//! `grid run-local`: the example modules built by `cargo xtask modules` (a WASI program in C,
//! a raw-ABI module in C) run on this machine with the native worker's sandbox, no master;
//! failures print their outcome and exit 3; a module breaking the ABI is refused with exit 2.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::PathBuf;

use common::grid;

/// No master is needed: nothing listens here.
const NOWHERE: &str = "http://127.0.0.1:9";

/// `<target>/task-modules/<name>.wasm` (built by `cargo xtask modules`).
fn example(name: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let path: PathBuf = exe
        .ancestors()
        .nth(3)
        .unwrap()
        .join("task-modules")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the example modules with `cargo xtask modules` (cargo xtask test does)",
        path.display()
    );
    path.display().to_string()
}

#[tokio::test]
async fn modules_run_locally_as_on_a_worker() {
    let hailstone = example("hailstone");
    let run = grid(
        NOWHERE,
        None,
        &[
            "run-local",
            &hailstone,
            "--input",
            r#"{"n": 27}"#,
            "--input",
            r#"{"n":6}"#,
        ],
        None,
    )
    .await;
    assert_eq!(
        run.ok(),
        "{\"ok\":{\"n\":27,\"peak\":9232,\"steps\":111}}\n{\"ok\":{\"n\":6,\"peak\":16,\"steps\":8}}"
    );

    let text = grid(
        NOWHERE,
        None,
        &[
            "run-local",
            &hailstone,
            "--input",
            r#"{"n": 1}"#,
            "--output",
            "text",
        ],
        None,
    )
    .await;
    assert_eq!(text.ok(), r#"{"ok":"{\"n\":1,\"peak\":1,\"steps\":0}\n"}"#);

    // An input file, and a failing input: its outcome is printed, the exit code says so.
    let failing = grid(
        NOWHERE,
        None,
        &[
            "run-local",
            &hailstone,
            "--inputs",
            "-",
            "--max-memory-mb",
            "16",
        ],
        Some(b"{\"n\": 3}\n{\"n\": -1}\n"),
    )
    .await;
    assert!(
        failing.failed(3).contains("1 of 2 inputs failed"),
        "{failing:?}"
    );
    assert_eq!(
        failing.stdout,
        "{\"ok\":{\"n\":3,\"peak\":16,\"steps\":7}}\n{\"err\":\"exit: the program exited with code 2; \
         stderr: expected {\\\"n\\\": <positive integer>}, got {\\\"n\\\":-1}\"}\n"
    );

    // The raw ABI's C example, linked with compiler-rt's builtins.
    let raw = grid(
        NOWHERE,
        None,
        &[
            "run-local",
            &example("sum-squares-raw"),
            "--input",
            "3000000",
        ],
        None,
    )
    .await;
    assert_eq!(raw.ok(), r#"{"ok":9000004500000500000}"#);

    let spins = grid(
        NOWHERE,
        None,
        &[
            "run-local",
            &example("hostile-spins"),
            "--input",
            "1",
            "--timeout-ms",
            "100",
        ],
        None,
    )
    .await;
    assert_eq!(
        spins.stdout,
        "{\"err\":\"timeout: the chunk ran longer than 100 ms\"}\n"
    );
    spins.failed(3);
}

#[tokio::test]
async fn modules_breaking_the_abi_are_refused_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imports.wasm");
    std::fs::write(
        &path,
        wat::parse_str(
            r#"(module (import "env" "now" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
        )
        .unwrap(),
    )
    .unwrap();
    let path = path.display().to_string();
    let refused = grid(NOWHERE, None, &["run-local", &path, "--input", "1"], None).await;
    assert!(
        refused
            .failed(2)
            .contains("the module imports `env`.`now`; a WASI command module may import only"),
        "{refused:?}"
    );
    let bad_input = grid(
        NOWHERE,
        None,
        &["run-local", &path, "--input", "{nope"],
        None,
    )
    .await;
    assert!(
        bad_input.failed(2).contains("--input #1: not JSON"),
        "{bad_input:?}"
    );
}
