//! `grid-loadgen`: parses the command line, raises the open-file limit, runs the simulated
//! workers until their stop condition or Ctrl-C, and prints the summary.

use anyhow::Context;
use clap::Parser;
use grid_loadgen::config::Args;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = args.into_config()?;

    // One socket per simulated worker: raise the soft limit as far as the hard limit allows.
    let wanted = u64::from(config.workers) + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => eprintln!(
            "warning: the open-file limit is {limit}, below the {wanted} this run needs; \
             raise it (ulimit -n) or expect failed connections"
        ),
        Ok(_) => {}
        Err(error) => eprintln!("warning: cannot raise the open-file limit: {error}"),
    }

    let report = grid_loadgen::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    print!("{report}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        if path == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n").with_context(|| format!("cannot write {path}"))?;
        }
    }
    Ok(())
}
