//! The command line: [`Cli`] and one `*Args` struct per subcommand (clap derive).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::inputs::InputFormat;
use crate::range::SpanRange;

/// Drive a grid master from the command line: submit jobs, watch them, fetch their results.
///
/// Exit codes: 0 success; 1 the master refused the request or could not be reached;
/// 2 a bad command line or inputs file (nothing was sent); 3 the job ended failed or
/// cancelled (`grid status`).
#[derive(Debug, Parser)]
#[command(name = "grid", version, about, long_about)]
pub struct Cli {
    /// The master's base URL.
    #[arg(
        long,
        global = true,
        env = "GRID_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,

    /// API bearer token (a submitter token, or the admin token).
    #[arg(
        long,
        global = true,
        env = "GRID_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// PEM file of certificate authorities to trust for an https:// master besides the
    /// Mozilla roots (a private CA, or the master's self-signed certificate).
    #[arg(long, global = true, env = "GRID_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a job; prints only its id, so `JOB=$(grid submit ...)` works.
    Submit(Box<SubmitArgs>),
    /// Show a job; with a live progress bar until it finishes when watching.
    Status(StatusArgs),
    /// Write a job's results (NDJSON, Parquet or Arrow IPC, exactly as the API gives them).
    Results(ResultsArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// List your jobs, newest first.
    Jobs(JobsArgs),
    /// Upload a WebAssembly module; prints its id (for `grid submit --module`).
    Upload(UploadArgs),
    /// Run a module on this machine exactly as a worker would (no master needed): prints one
    /// outcome per input, `{"ok": output}` or `{"err": "failure text"}`.
    RunLocal(RunLocalArgs),
    /// Manage submitter tokens (admin token only).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `grid submit`.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("program").required(true).args(["kernel", "module"])),
    group(ArgGroup::new("source").required(true).args(["inputs", "range"])),
)]
pub struct SubmitArgs {
    /// Built-in kernel: echo, mandelbrot, primes, sha256.
    #[arg(long, value_name = "NAME")]
    pub kernel: Option<String>,

    /// An uploaded module's id (from `grid upload`), instead of a kernel.
    #[arg(long, value_name = "ID")]
    pub module: Option<String>,

    /// Inputs file: a JSON array, or NDJSON (one input per line); `-` reads standard input.
    /// A Parquet or CSV file (by extension, or --format) is a dataset: sent as it is, one
    /// chunk per row.
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,

    /// Layout of the inputs file (auto: by extension, else by content).
    #[arg(long, value_enum, default_value_t = InputFormat::Auto, requires = "inputs")]
    pub format: InputFormat,

    /// Split [A, B) into --chunks inputs {"start": a, "end": b} (what `primes` takes).
    #[arg(long, value_name = "A..B", requires = "chunks")]
    pub range: Option<SpanRange>,

    /// How many inputs --range makes; the last one takes the remainder.
    #[arg(long, value_name = "N", requires = "range")]
    pub chunks: Option<u64>,

    /// Distinct workers whose outputs must agree per chunk (master default 2).
    #[arg(long, value_name = "R")]
    pub redundancy: Option<i64>,

    /// A name for the job.
    #[arg(long)]
    pub name: Option<String>,

    /// Higher runs first (master default 0).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub priority: Option<i64>,

    /// Most results gathered for one chunk before it fails (master default 2 × R + 1).
    #[arg(long, value_name = "M")]
    pub max_replicas: Option<i64>,

    /// Seconds a worker has for one chunk before it is reissued (master default 300).
    #[arg(long, value_name = "S")]
    pub lease_seconds: Option<i64>,

    /// Module jobs: wall-clock limit of one chunk in milliseconds (master default 30000).
    #[arg(long, value_name = "MS", conflicts_with = "kernel")]
    pub timeout_ms: Option<i64>,

    /// Module jobs: memory cap of one chunk in MiB (master default 256).
    #[arg(long, value_name = "MB", conflicts_with = "kernel")]
    pub max_memory_mb: Option<i64>,

    /// Module jobs: read each output as `json` (master default) or `text` (a JSON string).
    #[arg(long, value_enum, conflicts_with = "kernel")]
    pub output: Option<OutputArg>,

    /// Append the results to this Delta Lake table when the job finishes (`file:///...` or
    /// `s3://bucket/path`, under one of the master's --sink-root).
    #[arg(long, value_name = "URI")]
    pub sink: Option<String>,
}

/// How a module's output is read (a job's `output` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputArg {
    /// UTF-8 JSON text.
    Json,
    /// Any UTF-8 text, as a JSON string.
    Text,
}

impl OutputArg {
    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            OutputArg::Json => "json",
            OutputArg::Text => "text",
        }
    }
}

/// `grid run-local`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["input", "inputs"])))]
pub struct RunLocalArgs {
    /// The `.wasm` file (a raw task module or a WASI command module).
    pub module: PathBuf,

    /// One input (JSON); repeat for more.
    #[arg(long, value_name = "JSON")]
    pub input: Vec<String>,

    /// Inputs file, as for `grid submit` (a JSON array or NDJSON; `-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,

    /// Wall-clock limit of one chunk in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub timeout_ms: u32,

    /// Memory cap of one chunk in MiB.
    #[arg(long, value_name = "MB", default_value_t = 256)]
    pub max_memory_mb: u32,

    /// Read each output as `json` or `text` (a JSON string).
    #[arg(long, value_enum, default_value_t = OutputArg::Json)]
    pub output: OutputArg,
}

/// `grid status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Job id.
    pub id: i64,

    /// Follow the job with a progress bar until it finishes (the default when stdout and
    /// stderr are terminals).
    #[arg(long, short, conflicts_with = "no_watch")]
    pub watch: bool,

    /// Print the job once, even on a terminal.
    #[arg(long)]
    pub no_watch: bool,

    /// Seconds between polls while watching.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub interval: f64,

    /// Print the job as the API's JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// `grid results`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// Job id.
    pub id: i64,

    /// Write to this file instead of standard output (removed again if the download fails).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Encoding of the results (auto: by the extension of -o, `.parquet` or `.arrow` /
    /// `.arrows`, else NDJSON).
    #[arg(long, value_enum, default_value_t = ResultsFormat::Auto)]
    pub format: ResultsFormat,
}

/// How `grid results` asks for the results (`?format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultsFormat {
    /// By the output file's extension; NDJSON on standard output.
    Auto,
    /// One JSON line per finished chunk.
    Ndjson,
    /// An Apache Parquet file.
    Parquet,
    /// An Arrow IPC stream.
    Arrow,
}

impl ResultsFormat {
    /// The name the API takes, `auto` resolved against the output file.
    pub fn name(self, output: Option<&std::path::Path>) -> &'static str {
        match self {
            ResultsFormat::Ndjson => "ndjson",
            ResultsFormat::Parquet => "parquet",
            ResultsFormat::Arrow => "arrow",
            ResultsFormat::Auto => {
                let extension = output
                    .and_then(|path| path.extension())
                    .and_then(|extension| extension.to_str())
                    .map(str::to_ascii_lowercase);
                match extension.as_deref() {
                    Some("parquet") => "parquet",
                    Some("arrow" | "arrows") => "arrow",
                    _ => "ndjson",
                }
            }
        }
    }
}

/// `grid cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Job id.
    pub id: i64,
}

/// `grid jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Print the API's JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `grid upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The `.wasm` file.
    pub module: PathBuf,
}

/// `grid token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a submitter token and print it (it is shown only once).
    Create {
        /// Who or what the token is for (shown by `grid token list`).
        #[arg(long)]
        label: Option<String>,
    },
    /// List submitter tokens: id, label, created, last used, revoked (never the tokens).
    List,
    /// Revoke a submitter token by its id: it stops working at once (within 5 s on other
    /// masters sharing the database).
    Revoke {
        /// The token's id (from `grid token list`).
        id: i64,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn submit_needs_a_program_and_inputs() {
        let parse = |args: &[&str]| Cli::try_parse_from(["grid", "submit"].iter().chain(args));
        assert!(parse(&["--kernel", "primes", "--range", "0..10", "--chunks", "2"]).is_ok());
        assert!(parse(&["--module", "m1", "--inputs", "-"]).is_ok());
        assert!(parse(&["--kernel", "primes"]).is_err());
        assert!(parse(&["--inputs", "in.json"]).is_err());
        assert!(parse(&["--kernel", "k", "--module", "m", "--inputs", "-"]).is_err());
        assert!(parse(&["--kernel", "k", "--range", "0..10"]).is_err());
        assert!(
            parse(&[
                "--kernel", "k", "--inputs", "-", "--range", "0..9", "--chunks", "1"
            ])
            .is_err()
        );
        assert!(parse(&["--kernel", "k", "--range", "9..0", "--chunks", "1"]).is_err());
        assert!(parse(&["--kernel", "k", "--inputs", "-", "--priority", "-5"]).is_ok());
        // Module limits need a module.
        assert!(parse(&["--kernel", "k", "--inputs", "-", "--timeout-ms", "5"]).is_err());
        assert!(parse(&["--module", "m", "--inputs", "-", "--max-memory-mb", "64"]).is_ok());
        assert!(parse(&["--module", "m", "--inputs", "-", "--output", "text"]).is_ok());
        assert!(parse(&["--kernel", "k", "--inputs", "-", "--output", "text"]).is_err());
    }

    #[test]
    fn run_local_needs_inputs() {
        let parse = |args: &[&str]| Cli::try_parse_from(["grid", "run-local"].iter().chain(args));
        assert!(parse(&["m.wasm", "--input", "{\"n\": 10}", "--input", "3"]).is_ok());
        assert!(parse(&["m.wasm", "--inputs", "in.json", "--output", "text"]).is_ok());
        assert!(parse(&["m.wasm"]).is_err());
    }
}
