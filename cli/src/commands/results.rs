//! `grid results ID [-o FILE] [--format ndjson|parquet|arrow]`: copy
//! `GET /api/v1/jobs/{id}/results?format=...` byte for byte to stdout or a file, chunk by chunk
//! as it arrives (a large job's results never sit in memory). The format is `--format`, or
//! else the file's extension (`.parquet`, `.arrow` or `.arrows`; NDJSON otherwise).
//!
//! If the download breaks off, the partial file is removed and the command fails: a results
//! file is either complete or absent. On stdout, a closed pipe (`| head`) simply ends it.

use std::path::Path;

use reqwest::Method;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::args::ResultsArgs;
use crate::client::{Client, chain};
use crate::error::{Error, Result};

/// Download the results.
pub async fn run(client: &Client, args: ResultsArgs) -> Result<()> {
    let format = args.format.name(args.output.as_deref());
    let path = format!("/api/v1/jobs/{}/results?format={format}", args.id);
    let response = client.send(client.request(Method::GET, &path)).await?;
    match &args.output {
        None => {
            let mut stdout = tokio::io::stdout();
            match copy(response, &mut stdout, Path::new("-")).await {
                Err(Error::File { source, .. })
                    if source.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Ok(())
                }
                other => other,
            }
        }
        Some(file) => {
            let mut out = tokio::fs::File::create(file)
                .await
                .map_err(|error| Error::file(file, error))?;
            let copied = copy(response, &mut out, file).await;
            let synced = match copied {
                Ok(()) => out
                    .sync_all()
                    .await
                    .map_err(|error| Error::file(file, error)),
                Err(error) => Err(error),
            };
            if synced.is_err() {
                drop(out);
                let _ = tokio::fs::remove_file(file).await;
            }
            synced
        }
    }
}

/// Write the body to `out` as it arrives.
async fn copy(
    mut response: reqwest::Response,
    out: &mut (impl AsyncWrite + Unpin),
    out_path: &Path,
) -> Result<()> {
    let url = response.url().to_string();
    loop {
        let chunk = response.chunk().await.map_err(|error| Error::Response {
            url: url.clone(),
            detail: format!("the results broke off: {}", chain(&error)),
        })?;
        let Some(chunk) = chunk else { break };
        out.write_all(&chunk)
            .await
            .map_err(|error| Error::file(out_path, error))?;
    }
    out.flush()
        .await
        .map_err(|error| Error::file(out_path, error))
}
