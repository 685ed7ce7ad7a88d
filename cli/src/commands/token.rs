//! `grid token create`: `POST /api/v1/tokens` (admin token only); prints the new submitter
//! token, which the master shows only once.

use reqwest::Method;
use serde::Deserialize;

use crate::args::TokenCommand;
use crate::client::Client;
use crate::error::Result;

#[derive(Deserialize)]
struct Created {
    token: String,
}

/// Run a `grid token` subcommand.
pub async fn run(client: &Client, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create => {
            let created: Created = client
                .send_json(client.request(Method::POST, "/api/v1/tokens"))
                .await?;
            super::print_line(&created.token)
        }
    }
}
