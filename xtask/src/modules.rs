//! The example task modules (`examples/`), built for the tests and for people to upload.
//!
//! [`build_example_modules`] writes `<cargo target dir>/task-modules/<name>.wasm` for:
//! - every Rust example `examples/<name>/` (crate `example-<name>`, a `cdylib` using
//!   `grid-sdk`), built in release for `wasm32-unknown-unknown` without debug info (the
//!   workspace's release profile keeps line tables, which would make a 140 KB module 1.9 MB);
//! - every `examples/wat/<name>.wat`, assembled with the `wat` crate.
//!
//! Each module is checked with `grid_task_abi::check_module`, the master's own upload check,
//! so an example that breaks the task ABI fails the build instead of a test far away.
//! Tests find the directory from their own executable: `<target>/debug/deps/<test>` →
//! `<target>/task-modules/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

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
        step(&format!(
            "building the example task module {name} ({WASM_TARGET}, release)"
        ));
        let package = format!("example-{name}");
        // `cargo rustc` rather than `cargo build` so that stripping applies to this crate's
        // link alone and the dependencies' builds are shared with everything else.
        status(
            Command::new("cargo")
                .current_dir(root)
                .args(["rustc", "--lib", "--release", "--target", WASM_TARGET, "-p"])
                .arg(&package)
                .args(["--", "-C", "strip=debuginfo"]),
        )?;
        let built = target
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")));
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
