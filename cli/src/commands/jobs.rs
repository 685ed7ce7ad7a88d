//! `grid jobs`: the caller's jobs (`GET /api/v1/jobs`, newest first) as a table.

use serde::Deserialize;
use serde_json::Value;

use crate::args::JobsArgs;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::job::{JobList, table};

/// Print the table (or the API's JSON).
pub async fn run(client: &Client, args: JobsArgs) -> Result<()> {
    let path = "/api/v1/jobs";
    let raw: Value = client.get_json(path).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&raw).unwrap_or_else(|_| raw.to_string());
        return super::print_line(&text);
    }
    let list = JobList::deserialize(&raw).map_err(|error| Error::Response {
        url: client.url(path),
        detail: error.to_string(),
    })?;
    super::print_line(table(&list.jobs).trim_end())
}
