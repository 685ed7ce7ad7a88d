//! The example task modules (`examples/`), built for the tests and for people to upload.
//!
//! [`build_example_modules`] writes `<cargo target dir>/task-modules/<name>.wasm` for:
//! - every Rust example `examples/<name>/` (crate `example-<name>`): a `cdylib` using
//!   `grid-sdk` is built in release for `wasm32-unknown-unknown` (the raw ABI), a program
//!   (`src/main.rs`) for `wasm32-wasip1` (a WASI command module), both without debug info (the
//!   workspace's release profile keeps line tables, which would make a 140 KB module 1.9 MB);
//! - every `examples/wat/<name>.wat`, assembled with the `wat` crate;
//! - every `examples/c/<name>.c` with clang: a WASI program (`clang --target=wasm32-wasi`),
//!   or, for `<name>_raw.c`, a raw-ABI module without libc linked with compiler-rt's builtins;
//!   `examples/c/hostile/<name>.c` likewise as `hostile-<name>` (the tests' misbehaving
//!   programs); `_` in names becomes `-`;
//! - every `examples/zig/<name>.zig` as `<name>-zig` (`python -m ziglang build-exe -target
//!   wasm32-wasi`);
//! - every `examples/assemblyscript/<name>.ts` as `<name>-as` (`asc`, raw ABI).
//!
//! The command lines are the README's, so the README is what the tests run. The toolchains
//! are installed when missing (`toolchains.rs`).
//!
//! Each module is checked with `grid_task_abi::check_module`, the master's own upload check,
//! so an example that breaks the task ABI fails the build instead of a test far away.
//! Tests find the directory from their own executable: `<target>/debug/deps/<test>` →
//! `<target>/task-modules/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::toolchains::{self, BUILTINS, WASIP1_TARGET};
use crate::web::{self, WASM_TARGET};
use crate::{status, step};

/// Build every example module into `<target dir>/task-modules/` (see the module
/// documentation); returns that directory.
pub fn build_example_modules(root: &Path) -> Result<PathBuf> {
    web::ensure_wasm_target()?;
    let target = web::target_dir(root)?;
    let examples = root.join("examples");

    let mut modules: Vec<(String, Vec<u8>)> = Vec::new();
    for name in rust_examples(&examples)? {
        let package = format!("example-{name}");
        let program = examples.join(&name).join("src/main.rs").is_file();
        let rust_target = if program {
            toolchains::ensure_wasip1()?;
            WASIP1_TARGET
        } else {
            WASM_TARGET
        };
        step(&format!(
            "building the example task module {name} ({rust_target}, release)"
        ));
        // `cargo rustc` rather than `cargo build` so that stripping applies to this crate's
        // link alone and the dependencies' builds are shared with everything else.
        let kind = if program {
            vec!["--bin".to_owned(), package.clone()]
        } else {
            vec!["--lib".to_owned()]
        };
        status(
            Command::new("cargo")
                .current_dir(root)
                .arg("rustc")
                .args(&kind)
                .args(["--release", "--target", rust_target, "-p"])
                .arg(&package)
                .args(["--", "-C", "strip=debuginfo"]),
        )?;
        let artifact = if program {
            package.clone()
        } else {
            package.replace('-', "_")
        };
        let built = target
            .join(rust_target)
            .join("release")
            .join(format!("{artifact}.wasm"));
        let bytes = std::fs::read(&built)
            .with_context(|| format!("reading {} (is {name} a cdylib?)", built.display()))?;
        modules.push((name, bytes));
    }
    for path in wat_examples(&examples)? {
        let name = file_stem(&path)?;
        step(&format!("assembling the example task module {name}.wat"));
        let bytes =
            wat::parse_file(&path).with_context(|| format!("assembling {}", path.display()))?;
        modules.push((name, bytes));
    }

    let out = target.join("task-modules");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let scratch = target.join("task-module-builds");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    modules.extend(c_examples(&examples, &scratch)?);
    modules.extend(zig_examples(root, &examples, &scratch)?);
    modules.extend(assemblyscript_examples(&examples, &scratch)?);
    for (name, bytes) in &modules {
        if modules.iter().filter(|(other, _)| other == name).count() > 1 {
            bail!("two example task modules are named {name}");
        }
        grid_task_abi::check_module(bytes)
            .with_context(|| format!("the example task module {name} breaks the task ABI"))?;
        let path = out.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        step(&format!(
            "  {} ({} bytes, {})",
            path.display(),
            bytes.len(),
            grid_task_abi::module_id(bytes)
        ));
    }
    Ok(out)
}

/// The C examples (see the module documentation), built into `scratch`.
fn c_examples(examples: &Path, scratch: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = examples.join("c");
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    for path in files_with_extension(&dir, "c")? {
        sources.push((file_stem(&path)?.replace('_', "-"), path));
    }
    for path in files_with_extension(&dir.join("hostile"), "c")? {
        let name = format!("hostile-{}", file_stem(&path)?.replace('_', "-"));
        sources.push((name, path));
    }
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    toolchains::ensure_c()?;
    let mut built = Vec::new();
    for (name, source) in sources {
        let wasm = scratch.join(format!("{name}.wasm"));
        let mut clang = Command::new("clang");
        if name.ends_with("-raw") {
            step(&format!(
                "compiling the C example {name} (raw ABI, compiler-rt builtins)"
            ));
            // The README's command line for raw modules, builtins archive included.
            clang.args([
                "--target=wasm32",
                "-O2",
                "-nostdlib",
                "-Wl,--no-entry",
                "-Wl,--export=grid_alloc",
                "-Wl,--export=grid_run",
                "-o",
            ]);
            clang.arg(&wasm).arg(&source).arg(BUILTINS);
        } else {
            step(&format!("compiling the C example {name} (WASI, wasi-libc)"));
            clang.args(["--target=wasm32-wasi", "-O2", "-o"]);
            clang.arg(&wasm).arg(&source);
        }
        status(&mut clang)?;
        built.push((name, read(&wasm)?));
    }
    Ok(built)
}

/// The Zig examples, `<name>-zig`.
fn zig_examples(root: &Path, examples: &Path, scratch: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let sources = files_with_extension(&examples.join("zig"), "zig")?;
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let python = toolchains::ensure_zig(root)?;
    let mut built = Vec::new();
    for source in sources {
        let name = format!("{}-zig", file_stem(&source)?.replace('_', "-"));
        step(&format!("compiling the Zig example {name} (wasm32-wasi)"));
        let wasm = scratch.join(format!("{name}.wasm"));
        let mut emit = std::ffi::OsString::from("-femit-bin=");
        emit.push(&wasm);
        status(
            Command::new(&python)
                .args(["-m", "ziglang", "build-exe", "-target", "wasm32-wasi"])
                .args(["-O", "ReleaseSmall"])
                .arg(emit)
                .arg(&source)
                // Zig's cache goes beside the module, not into the source tree.
                .arg("--cache-dir")
                .arg(scratch.join("zig-cache"))
                .current_dir(scratch),
        )?;
        built.push((name, read(&wasm)?));
    }
    Ok(built)
}

/// The AssemblyScript examples, `<name>-as`.
fn assemblyscript_examples(examples: &Path, scratch: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = examples.join("assemblyscript");
    let sources = files_with_extension(&dir, "ts")?;
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let asc = toolchains::ensure_assemblyscript(&dir)?;
    let mut built = Vec::new();
    for source in sources {
        let name = format!("{}-as", file_stem(&source)?.replace('_', "-"));
        step(&format!(
            "compiling the AssemblyScript example {name} (raw ABI)"
        ));
        let wasm = scratch.join(format!("{name}.wasm"));
        status(
            Command::new(&asc)
                .arg(&source)
                .args(["-O3", "--runtime", "stub", "--use", "abort=", "-o"])
                .arg(&wasm)
                .current_dir(&dir),
        )?;
        built.push((name, read(&wasm)?));
    }
    Ok(built)
}

/// `dir/*.<extension>`, sorted; nothing when `dir` does not exist.
fn files_with_extension(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = read_dir(dir)?
        .into_iter()
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == extension))
        .collect();
    paths.sort();
    Ok(paths)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `examples/<name>/` directories holding a crate, sorted.
fn rust_examples(examples: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in read_dir(examples)? {
        if entry.join("Cargo.toml").is_file() {
            names.push(file_stem(&entry)?);
        }
    }
    names.sort();
    Ok(names)
}

/// `examples/wat/*.wat`, sorted.
fn wat_examples(examples: &Path) -> Result<Vec<PathBuf>> {
    let dir = examples.join("wat");
    let mut paths: Vec<PathBuf> = read_dir(&dir)?
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "wat"))
        .collect();
    paths.sort();
    Ok(paths)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| Ok(entry?.path()))
        .collect()
}

fn file_stem(path: &Path) -> Result<String> {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no UTF-8 name", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn the_examples_are_found() -> Result<()> {
        let examples = workspace().join("examples");
        assert!(rust_examples(&examples)?.contains(&"collatz".to_owned()));
        let wat = wat_examples(&examples)?;
        assert!(wat.iter().any(|path| path.ends_with("wat/fibonacci.wat")));
        assert!(!rust_examples(&examples)?.contains(&"wat".to_owned()));
        assert!(rust_examples(&examples)?.contains(&"wordcount".to_owned()));
        let c = files_with_extension(&examples.join("c"), "c")?;
        assert!(c.iter().any(|path| path.ends_with("c/sum_squares_raw.c")));
        assert!(!files_with_extension(&examples.join("c/hostile"), "c")?.is_empty());
        assert!(files_with_extension(&examples.join("nowhere"), "c")?.is_empty());
        Ok(())
    }

    #[test]
    fn the_wat_examples_follow_the_abi() -> Result<()> {
        // The Rust examples need a wasm build; `cargo xtask modules` checks those.
        for path in wat_examples(&workspace().join("examples"))? {
            let bytes = wat::parse_file(&path)?;
            grid_task_abi::check_module(&bytes)
                .with_context(|| format!("{} breaks the task ABI", path.display()))?;
        }
        Ok(())
    }
}
