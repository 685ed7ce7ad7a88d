//! The Python tools the tests drive (client tests, schemathesis, DuckDB, deltalake, moto's S3
//! server, the peers of the benchmarks): one virtual environment under
//! `<target>/python-venv`, installed from `xtask/requirements-test.txt` with pip.
//!
//! `cargo xtask test` passes its interpreter to the tests as `GRID_PYTHON`. A test that needs
//! Python reads that variable and fails with a clear message when it is missing (run the suite
//! through `cargo xtask test`), never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::web;

/// The requirements file, relative to the workspace root. One package per line, pinned where
/// an API matters; add to it instead of installing anything by hand.
const REQUIREMENTS: &str = "xtask/requirements-test.txt";

/// Create (once) the virtual environment and bring it up to `REQUIREMENTS`; returns the path
/// of its `python`. pip is skipped when the requirements file has not changed since the last
/// successful install from this checkout (a stamp beside the environment holds a copy and the
/// workspace root it was installed from).
///
/// The root counts because the requirements install the Python client (`clients/python`) as
/// an editable install, which points at one checkout's directory: several clones sharing one
/// target directory (CI's fresh clones and a developer's tree, all on `~/.cache/grid-target`)
/// each re-point it at their own sources when they run.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = web::target_dir(root)?.join("python-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        ensure_venv_module()?;
        crate::step(&format!(
            "creating a Python virtual environment at {}",
            venv.display()
        ));
        crate::status(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let requirements_path = root.join(REQUIREMENTS);
    let requirements = std::fs::read_to_string(&requirements_path)
        .with_context(|| format!("cannot read {}", requirements_path.display()))?;
    let requirements = format!("# installed from {}\n{requirements}", root.display());
    let stamp = venv.join("installed-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(requirements.as_str()) {
        crate::step("installing the test suite's Python packages with pip");
        crate::status(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements_path)
                .current_dir(root),
        )?;
        std::fs::write(&stamp, &requirements)?;
    }
    Ok(python)
}

/// `python3 -m venv` needs Debian's `python3-venv` when Python is Debian's own.
fn ensure_venv_module() -> Result<()> {
    let works = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .status()
        .is_ok_and(|status| status.success());
    if works {
        return Ok(());
    }
    if Command::new("python3").arg("--version").status().is_err() {
        bail!("Python 3 is missing: install python3 and python3-venv");
    }
    web::apt_install(&["python3-venv"], "Python's venv module")
}
