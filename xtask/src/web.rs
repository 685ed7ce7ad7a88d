//! The contribute page's build, and the browser tools its tests need.
//!
//! - [`build_web`]: the wasm target, the pinned `wasm-bindgen` CLI, the browser worker built
//!   for `wasm32-unknown-unknown`, `wasm-bindgen --target web` into `frontend/pkg/`, then
//!   `frontend/dist/`: the pages of `frontend/src/` with their scripts, styles and the wasm
//!   renamed by content hash (`app.<16 hex>.js`), which `grid-server` embeds and serves with
//!   long-lived caching. Run it before building `grid-server`.
//!   The pages' npm packages (the dashboard's chart, uPlot) are installed from
//!   `frontend/package-lock.json` when missing and copied into `frontend/dist/` the same way.
//! - [`ensure_browser_tools`]: Chromium and Node (installed with apt when missing and running
//!   as root) and `playwright-core` from `frontend/package-lock.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The wasm target the browser worker (and the example task modules) are built for.
pub(crate) const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// Chromium as Debian installs it; `CHROMIUM` overrides.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Files of `frontend/src/` and `frontend/pkg/` renamed by content hash, in an order where
/// every file comes after the files it refers to (its references are rewritten before it is
/// hashed, so a change anywhere renames everything that leads to it).
const HASHED: &[(&str, &str)] = &[
    ("pkg", "grid_worker_wasm_bg.wasm"),
    ("pkg", "grid_worker_wasm.js"),
    // The task-module sandbox, started by modules.js, which worker.js imports.
    ("src", "sandbox.js"),
    ("src", "modules.js"),
    ("src", "worker.js"),
    ("src", "bench-worker.js"),
    ("src", "app.js"),
    ("src", "bench.js"),
    ("src", "style.css"),
    // The dashboard, job and API pages; uPlot is the dashboard's chart (npm, package.json).
    ("node_modules/uplot/dist", "uPlot.esm.js"),
    ("node_modules/uplot/dist", "uPlot.min.css"),
    ("src", "sse.js"),
    ("src", "pages.css"),
    ("src", "dashboard.js"),
    ("src", "job.js"),
    ("src", "api.js"),
    ("src", "volunteer.js"),
];
/// Pages keep their names (they are what people open) and are served `no-cache`.
const PAGES: &[&str] = &[
    "index.html",
    "bench.html",
    "dashboard.html",
    "job.html",
    "api.html",
];
/// A file of each npm package the pages use, to know whether `npm ci` has run.
const NPM_PACKAGES: &[&str] = &["node_modules/uplot/dist/uPlot.esm.js"];

fn step(message: &str) {
    eprintln!("\x1b[1mxtask:\x1b[0m {message}");
}

fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// The standard output of a command that succeeded, or `None`.
fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build the browser worker and write `frontend/dist/` (see the module documentation).
/// `release` builds the wasm optimised (what people should be served; the benchmark needs it).
pub fn build_web(root: &Path, release: bool) -> Result<()> {
    ensure_wasm_target()?;
    let version = pinned_wasm_bindgen_version(root)?;
    ensure_wasm_bindgen(&version)?;

    let profile = if release { "release" } else { "debug" };
    step(&format!(
        "building the browser worker ({WASM_TARGET}, {profile})"
    ));
    let mut build = Command::new("cargo");
    build
        .current_dir(root)
        .args(["build", "-p", "grid-worker-wasm", "--target", WASM_TARGET]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let wasm = target_dir(root)?
        .join(WASM_TARGET)
        .join(profile)
        .join("grid_worker_wasm.wasm");

    let pkg = root.join("frontend/pkg");
    step("running wasm-bindgen --target web");
    if pkg.exists() {
        std::fs::remove_dir_all(&pkg).with_context(|| format!("removing {}", pkg.display()))?;
    }
    run(Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(&pkg)
        .arg(&wasm))?;

    ensure_npm_packages(root)?;
    step("writing frontend/dist with content-hashed assets");
    write_dist(root)
}

/// `frontend/src` + `frontend/pkg` → `frontend/dist`, written aside and then swapped in.
fn write_dist(root: &Path) -> Result<()> {
    let frontend = root.join("frontend");
    let staging = frontend.join("dist.tmp");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;

    // Plain name → hashed name, filled in dependency order.
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    for (dir, name) in HASHED {
        let path = frontend.join(dir).join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let bytes = rewrite_references(name, bytes, &renamed)?;
        let hashed = hashed_name(name, &bytes);
        std::fs::write(staging.join(&hashed), &bytes)?;
        renamed.insert((*name).to_owned(), hashed);
    }
    for page in PAGES {
        let path = frontend.join("src").join(page);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let bytes = rewrite_references(page, bytes, &renamed)?;
        std::fs::write(staging.join(page), bytes)?;
    }
    let inputs = root.join("bench/inputs.json");
    std::fs::copy(&inputs, staging.join("bench-inputs.json"))
        .with_context(|| format!("copying {}", inputs.display()))?;

    let dist = frontend.join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    std::fs::rename(&staging, &dist)?;
    for (plain, hashed) in &renamed {
        step(&format!("  {plain} -> dist/{hashed}"));
    }
    Ok(())
}

/// Replace quoted references (`'./x.js'`, `"x.js"`) to already-hashed files in text assets.
fn rewrite_references(
    name: &str,
    bytes: Vec<u8>,
    renamed: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    if name.ends_with(".wasm") {
        return Ok(bytes);
    }
    let mut text = String::from_utf8(bytes).with_context(|| format!("{name} is not UTF-8 text"))?;
    for (plain, hashed) in renamed {
        for quote in ['\'', '"'] {
            for prefix in ["./", ""] {
                let from = format!("{quote}{prefix}{plain}{quote}");
                let to = format!("{quote}{prefix}{hashed}{quote}");
                text = text.replace(&from, &to);
            }
        }
    }
    Ok(text.into_bytes())
}

/// `app.js` → `app.0123456789abcdef.js`: 64-bit FNV-1a of the content (cache busting only,
/// not security: the names merely have to change when the content does).
fn hashed_name(name: &str, bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash:016x}.{ext}"),
        None => format!("{name}.{hash:016x}"),
    }
}

/// `rustup target add wasm32-unknown-unknown` unless it is installed.
pub(crate) fn ensure_wasm_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]));
    match installed {
        Some(list) if list.lines().any(|line| line.trim() == WASM_TARGET) => Ok(()),
        Some(_) => {
            step(&format!("adding the {WASM_TARGET} target (rustup)"));
            run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
        }
        None => {
            // Without rustup (a distribution's Rust), the target must come with the toolchain.
            step("rustup not found; assuming the toolchain has the wasm32 target");
            Ok(())
        }
    }
}

/// The version in the workspace's `wasm-bindgen = "=X.Y.Z"` pin: the CLI must match it.
fn pinned_wasm_bindgen_version(root: &Path) -> Result<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    manifest
        .lines()
        .filter_map(|line| line.trim().strip_prefix("wasm-bindgen = \"="))
        .find_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .context("the workspace Cargo.toml must pin wasm-bindgen as `wasm-bindgen = \"=X.Y.Z\"`")
}

/// Install `wasm-bindgen-cli` at `version` unless `wasm-bindgen --version` already says it.
fn ensure_wasm_bindgen(version: &str) -> Result<()> {
    let current = output(Command::new("wasm-bindgen").arg("--version")).unwrap_or_default();
    if current.split_whitespace().nth(1) == Some(version) {
        return Ok(());
    }
    step(&format!(
        "installing wasm-bindgen-cli {version} (it must equal the wasm-bindgen crate; takes a few minutes)"
    ));
    let install = |locked: bool| {
        let mut command = Command::new("cargo");
        command.args(["install", "wasm-bindgen-cli", "--version", version]);
        if locked {
            command.arg("--locked");
        }
        run(&mut command)
    };
    if let Err(error) = install(true) {
        // Some registry mirrors lack a crate version the CLI's lock file names.
        step(&format!("{error:#}; retrying without --locked"));
        install(false)?;
    }
    Ok(())
}

/// Where cargo puts build output (honours `CARGO_TARGET_DIR` and cargo configuration).
pub(crate) fn target_dir(root: &Path) -> Result<PathBuf> {
    let metadata = output(Command::new("cargo").current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))
    .context("cargo metadata failed")?;
    let key = "\"target_directory\":\"";
    let start = metadata
        .find(key)
        .context("no target_directory in cargo metadata")?
        + key.len();
    let end = metadata[start..]
        .find('"')
        .context("malformed cargo metadata")?;
    Ok(PathBuf::from(
        metadata[start..start + end].replace("\\\\", "\\"),
    ))
}

/// Chromium, Node and `playwright-core` for the browser tests and the benchmark.
pub fn ensure_browser_tools(root: &Path) -> Result<()> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.to_owned());
    if !Path::new(&chromium).exists() {
        apt_install(
            &["chromium"],
            "Chromium (the browser tests run in headless Chromium)",
        )?;
    }
    if output(Command::new("node").arg("--version")).is_none() {
        apt_install(
            &["nodejs", "npm"],
            "Node.js (it drives Chromium in the browser tests)",
        )?;
    }
    let frontend = root.join("frontend");
    if !frontend
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        step("installing playwright-core (npm ci in frontend/; no browser download)");
        npm_ci(&frontend)?;
    }
    Ok(())
}

/// The npm packages the pages use (`frontend/package.json`), installed when missing.
fn ensure_npm_packages(root: &Path) -> Result<()> {
    let frontend = root.join("frontend");
    if NPM_PACKAGES.iter().all(|file| frontend.join(file).exists()) {
        return Ok(());
    }
    if output(Command::new("npm").arg("--version")).is_none() {
        apt_install(
            &["nodejs", "npm"],
            "Node.js and npm (the pages use npm packages, e.g. the dashboard's chart)",
        )?;
    }
    step("installing the pages' npm packages (npm ci in frontend/)");
    npm_ci(&frontend)
}

/// `npm ci` in `frontend/` (falling back to `npm install`); never downloads browsers.
fn npm_ci(frontend: &Path) -> Result<()> {
    let ci = run(Command::new("npm")
        .current_dir(frontend)
        .args(["ci", "--no-audit", "--no-fund"])
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"));
    if let Err(error) = ci {
        step(&format!("{error:#}; trying npm install"));
        run(Command::new("npm")
            .current_dir(frontend)
            .args(["install", "--no-audit", "--no-fund"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"))?;
    }
    Ok(())
}

/// `apt-get install -y <packages>` when running as root on Debian, else a clear error.
pub(crate) fn apt_install(packages: &[&str], what: &str) -> Result<()> {
    let is_root = output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0");
    let has_apt = Path::new("/usr/bin/apt-get").exists();
    if !(is_root && has_apt) {
        bail!(
            "{what} is missing: install {} (as root: apt-get install -y {})",
            packages.join(" "),
            packages.join(" ")
        );
    }
    step(&format!("installing {what} with apt-get"));
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_follow_the_content() {
        let a = hashed_name("app.js", b"one");
        assert!(a.starts_with("app.") && a.ends_with(".js") && a.len() == "app..js".len() + 16);
        assert_eq!(a, hashed_name("app.js", b"one"));
        assert_ne!(a, hashed_name("app.js", b"two"));
        assert_eq!(hashed_name("x.wasm", b"").len(), "x..wasm".len() + 16);
    }

    #[test]
    fn references_are_rewritten_in_text_only() {
        let mut renamed = BTreeMap::new();
        renamed.insert("worker.js".to_owned(), "worker.00ff.js".to_owned());
        let text = b"new URL('./worker.js', import.meta.url); \"worker.js\"; './networker.js'";
        let out = rewrite_references("app.js", text.to_vec(), &renamed).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "new URL('./worker.00ff.js', import.meta.url); \"worker.00ff.js\"; './networker.js'"
        );
        let wasm =
            rewrite_references("a.wasm", b"'./worker.js'".to_vec(), &renamed).unwrap_or_default();
        assert_eq!(wasm, b"'./worker.js'");
    }
}
