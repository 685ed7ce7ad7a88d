//! The compilers the example task modules are built with (`modules.rs`), each installed by
//! xtask itself when missing and skipped when present, so a fresh machine builds them all:
//!
//! | toolchain | from | what it builds | cold install here |
//! |---|---|---|---|
//! | clang, lld, wasi-libc, compiler-rt builtins | Debian (`apt-get`) | C: WASI programs and raw-ABI modules | ~15 s |
//! | Rust `wasm32-wasip1` | `rustup target add` | Rust WASI programs | ~4 s |
//! | Zig | PyPI `ziglang` (pinned in `xtask/requirements-test.txt`), in the test venv (`python.rs`) | Zig WASI programs | ~15 s |
//! | AssemblyScript | npm, `examples/assemblyscript/package.json` | raw-ABI modules | ~5 s |

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{python, status, step, web};

/// The Debian packages for C: the compiler and linker, WASI's libc, and compiler-rt's
/// builtins for wasm32 (`__multi3` and friends, which `-nostdlib` raw modules link by hand).
const C_PACKAGES: &[&str] = &["clang", "lld", "wasi-libc", "libclang-rt-14-dev-wasm32"];

/// compiler-rt's builtins archive for wasm32 (Debian's `libclang-rt-14-dev-wasm32`).
pub const BUILTINS: &str =
    "/usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a";

/// Where wasi-libc's headers live (Debian's `wasi-libc`).
const WASI_LIBC_HEADERS: &str = "/usr/include/wasm32-wasi/stdio.h";

/// The Rust target of WASI command programs.
pub const WASIP1_TARGET: &str = "wasm32-wasip1";

/// `clang` for wasm32 with wasi-libc and the builtins, installed with apt-get when missing.
pub fn ensure_c() -> Result<()> {
    let clang = Command::new("clang")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if clang && Path::new(WASI_LIBC_HEADERS).exists() && Path::new(BUILTINS).exists() {
        return Ok(());
    }
    web::apt_install(C_PACKAGES, "clang with wasi-libc (C to WebAssembly)")
}

/// `rustup target add wasm32-wasip1` unless it is installed.
pub fn ensure_wasip1() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    match installed {
        Some(list) if list.lines().any(|line| line.trim() == WASIP1_TARGET) => Ok(()),
        Some(_) => {
            step(&format!("adding the {WASIP1_TARGET} target (rustup)"));
            status(Command::new("rustup").args(["target", "add", WASIP1_TARGET]))
        }
        // Without rustup (a distribution's Rust), the target must come with the toolchain.
        None => Ok(()),
    }
}

/// The Python that runs `python -m ziglang`: the test venv, which `requirements-test.txt`
/// gives Zig.
pub fn ensure_zig(root: &Path) -> Result<PathBuf> {
    python::ensure_venv(root)
}

/// `asc`, from `examples/assemblyscript/`'s `npm ci` (once).
pub fn ensure_assemblyscript(dir: &Path) -> Result<PathBuf> {
    let asc = dir.join("node_modules/.bin/asc");
    if !asc.exists() {
        let npm = Command::new("npm")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !npm {
            web::apt_install(
                &["nodejs", "npm"],
                "Node.js and npm (AssemblyScript's compiler)",
            )?;
        }
        step("installing AssemblyScript (npm ci in examples/assemblyscript/)");
        status(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(dir),
        )
        .context("installing AssemblyScript with npm")?;
    }
    Ok(asc)
}
