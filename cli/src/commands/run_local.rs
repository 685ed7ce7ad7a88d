//! `grid run-local module.wasm --input '{"n": 10}'`: run a module on this machine exactly as a
//! worker would, to try it before uploading it.
//!
//! Nothing here is a copy of the worker: the module goes through `grid_worker::sandbox`, the
//! native worker's own sandbox (the master's ABI check, wasmtime with the same limits, the
//! same WASI subset, the same failure texts), so what this prints is the outcome a native
//! worker reports, and a browser worker reports the same bytes. Each input's outcome is one
//! line of JSON, `{"ok": output}` or `{"err": "failure text"}`, in input order.

use grid_worker::sandbox::{ChunkLimits, Sandbox};
use serde_json::Value;

use crate::args::{OutputArg, RunLocalArgs};
use crate::error::{Error, Result};
use crate::inputs::{self, InputFormat, InputSource};

/// Run every input and print its outcome; [`Error::ChunksFailed`] when any failed.
pub async fn run(args: RunLocalArgs) -> Result<()> {
    let bytes = tokio::fs::read(&args.module)
        .await
        .map_err(|error| Error::file(&args.module, error))?;
    let inputs = inputs(&args)?;
    let output = match args.output {
        OutputArg::Json => grid_protocol::OutputMode::Json,
        OutputArg::Text => grid_protocol::OutputMode::Text,
    };
    let limits = ChunkLimits::new(args.timeout_ms, args.max_memory_mb).with_output(output);
    let module_name = args.module.display().to_string();
    // Compiling and running block (as on the worker's compute threads).
    let outcomes = tokio::task::spawn_blocking(move || -> Result<Vec<grid_protocol::Outcome>> {
        let sandbox = Sandbox::new()
            .map_err(|error| Error::Module(format!("cannot start wasmtime: {error}")))?;
        let module = sandbox
            .compile(&bytes)
            .map_err(|error| Error::Module(format!("{module_name}: {error}")))?;
        Ok(inputs
            .iter()
            .map(|input| module.run(input, limits))
            .collect())
    })
    .await
    .map_err(|error| Error::Module(format!("the run stopped: {error}")))??;
    let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
    for outcome in &outcomes {
        let line = serde_json::to_string(outcome)
            .map_err(|error| Error::Module(format!("cannot print an outcome: {error}")))?;
        super::print_line(&line)?;
    }
    if failed > 0 {
        return Err(Error::ChunksFailed {
            failed,
            total: outcomes.len(),
        });
    }
    Ok(())
}

/// The inputs: every `--input`, then the `--inputs` file's.
fn inputs(args: &RunLocalArgs) -> Result<Vec<Value>> {
    let mut values = Vec::new();
    for (index, text) in args.input.iter().enumerate() {
        let value = serde_json::from_str(text).map_err(|error| Error::Inputs {
            source_name: format!("--input #{}", index + 1),
            message: format!("not JSON: {error}"),
        })?;
        values.push(value);
    }
    if let Some(path) = &args.inputs {
        let mut array = Vec::new();
        let source = InputSource::File {
            path: path.clone(),
            format: InputFormat::Auto,
        };
        inputs::append_array(&mut array, &source)?;
        let parsed: Vec<Value> = serde_json::from_slice(&array).map_err(|error| Error::Inputs {
            source_name: path.display().to_string(),
            message: error.to_string(),
        })?;
        values.extend(parsed);
    }
    Ok(values)
}
