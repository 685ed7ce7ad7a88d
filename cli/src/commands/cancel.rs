//! `grid cancel ID`: `DELETE /api/v1/jobs/{id}`. A job that already finished answers 409,
//! reported like every API error.

use reqwest::Method;

use crate::args::CancelArgs;
use crate::client::Client;
use crate::error::Result;
use crate::job::Job;

/// Cancel the job and print its state afterwards.
pub async fn run(client: &Client, args: CancelArgs) -> Result<()> {
    let path = format!("/api/v1/jobs/{}", args.id);
    let job: Job = client
        .send_json(client.request(Method::DELETE, &path))
        .await?;
    super::print_line(&job.headline())
}
