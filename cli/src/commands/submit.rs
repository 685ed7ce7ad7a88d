//! `grid submit`: `POST /api/v1/jobs`, then print the new job's id.
//!
//! The body is built in one buffer: `{"inputs":` followed by the inputs array read or written
//! straight into it (see [`crate::inputs`]), then the other fields. Nothing is sent until the
//! inputs are known to be well-formed.
//!
//! A Parquet or CSV dataset (`--inputs rows.parquet`) goes as a multipart form instead: a
//! `job` part with the fields and an `inputs` part with the file as it is; the master reads
//! its rows, one chunk each.

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;

use crate::args::SubmitArgs;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::inputs::{self, InputSource};
use crate::job::Job;

/// The fields of the body besides `inputs`; absent ones take the master's defaults.
#[derive(Debug, Serialize)]
struct Fields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redundancy: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_replicas: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_memory_mb: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sink: Option<Sink<'a>>,
}

/// `"sink": {"delta": URI}`.
#[derive(Debug, Serialize)]
struct Sink<'a> {
    delta: &'a str,
}

/// Where the inputs come from, as the command line says.
fn source(args: &SubmitArgs) -> Result<InputSource> {
    match (&args.inputs, args.range, args.chunks) {
        (Some(path), None, None) => Ok(InputSource::File {
            path: path.clone(),
            format: args.format,
        }),
        (None, Some(range), Some(chunks)) => Ok(InputSource::Range { range, chunks }),
        // clap's argument groups rule the other combinations out; say so anyway.
        _ => Err(Error::Usage(
            "give either --inputs FILE or --range A..B --chunks N".into(),
        )),
    }
}

/// The job's fields besides the inputs, as JSON.
fn fields_json(args: &SubmitArgs) -> Result<Vec<u8>> {
    let fields = Fields {
        kernel: args.kernel.as_deref(),
        module: args.module.as_deref(),
        redundancy: args.redundancy,
        name: args.name.as_deref(),
        max_replicas: args.max_replicas,
        priority: args.priority,
        lease_seconds: args.lease_seconds,
        timeout_ms: args.timeout_ms,
        max_memory_mb: args.max_memory_mb,
        output: args.output.map(|output| output.name()),
        sink: args.sink.as_deref().map(|delta| Sink { delta }),
    };
    serde_json::to_vec(&fields)
        .map_err(|error| Error::Usage(format!("cannot encode the job fields: {error}")))
}

/// The request body: one JSON object, inputs first.
pub fn body(args: &SubmitArgs) -> Result<Vec<u8>> {
    let fields = fields_json(args)?;
    let mut body = b"{\"inputs\":".to_vec();
    inputs::append_array(&mut body, &source(args)?)?;
    // `fields` is `{...}` with at least the kernel or the module: splice its members in.
    body.push(b',');
    body.extend_from_slice(fields.get(1..).unwrap_or(b"}"));
    Ok(body)
}

/// Submit the job and print its id.
pub async fn run(client: &Client, args: SubmitArgs) -> Result<()> {
    let source = source(&args)?;
    if let Some((path, format)) = inputs::dataset(&source) {
        let form = dataset_form(&args, path, format)?;
        let request = client.request(Method::POST, "/api/v1/jobs").multipart(form);
        let job: Job = client.send_json(request).await?;
        return super::print_line(&job.id.to_string());
    }
    let body = body(&args)?;
    let request = client
        .request(Method::POST, "/api/v1/jobs")
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    let job: Job = client.send_json(request).await?;
    super::print_line(&job.id.to_string())
}

/// The multipart form of a dataset submission: the fields, and the file as it is.
fn dataset_form(
    args: &SubmitArgs,
    path: &std::path::Path,
    format: inputs::DatasetFormat,
) -> Result<reqwest::multipart::Form> {
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .map_err(|error| Error::file(path, error))?;
        bytes
    } else {
        std::fs::read(path).map_err(|error| Error::file(path, error))?
    };
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("inputs")
        .to_owned();
    let job = reqwest::multipart::Part::bytes(fields_json(args)?)
        .mime_str("application/json")
        .map_err(|error| Error::Usage(error.to_string()))?;
    let file = reqwest::multipart::Part::bytes(bytes)
        .file_name(file_name)
        .mime_str(format.content_type())
        .map_err(|error| Error::Usage(error.to_string()))?;
    Ok(reqwest::multipart::Form::new()
        .part("job", job)
        .part("inputs", file))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;
    use serde_json::{Value, json};

    use super::*;
    use crate::args::{Cli, Command};

    fn submit_args(args: &[&str]) -> SubmitArgs {
        let cli = Cli::try_parse_from(["grid", "submit"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Submit(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_body_has_the_inputs_and_only_the_given_fields() {
        let args = submit_args(&[
            "--kernel",
            "primes",
            "--range",
            "0..100",
            "--chunks",
            "2",
            "--redundancy",
            "1",
            "--name",
            "a \"quoted\" name",
            "--priority",
            "-3",
        ]);
        let body: Value = serde_json::from_slice(&body(&args).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "kernel": "primes",
                "inputs": [{"start": 0, "end": 50}, {"start": 50, "end": 100}],
                "redundancy": 1,
                "name": "a \"quoted\" name",
                "priority": -3,
            })
        );
    }

    #[test]
    fn a_module_is_passed_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        std::fs::write(&path, "1\n2\n").unwrap();
        let args = submit_args(&["--module", "abc", "--inputs", path.to_str().unwrap()]);
        let plain: Value = serde_json::from_slice(&body(&args).unwrap()).unwrap();
        assert_eq!(plain, json!({"module": "abc", "inputs": [1, 2]}));

        let args = submit_args(&[
            "--module",
            "abc",
            "--inputs",
            path.to_str().unwrap(),
            "--timeout-ms",
            "500",
            "--max-memory-mb",
            "32",
        ]);
        let limited: Value = serde_json::from_slice(&body(&args).unwrap()).unwrap();
        assert_eq!(
            limited,
            json!({"module": "abc", "inputs": [1, 2], "timeout_ms": 500, "max_memory_mb": 32})
        );
    }
}
