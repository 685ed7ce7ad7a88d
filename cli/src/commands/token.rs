//! `grid token create | list | revoke` (admin token only): `POST /api/v1/tokens` prints the
//! new submitter token, which the master shows only once; `GET /api/v1/tokens` lists tokens
//! (never their secrets); `DELETE /api/v1/tokens/{id}` revokes one.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::args::TokenCommand;
use crate::client::Client;
use crate::error::Result;

#[derive(Deserialize)]
struct Created {
    token: String,
}

#[derive(Deserialize)]
struct TokenList {
    tokens: Vec<Token>,
}

#[derive(Deserialize)]
struct Token {
    id: i64,
    label: Option<String>,
    created_at: String,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
}

/// Run a `grid token` subcommand.
pub async fn run(client: &Client, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { label } => {
            let mut request = client.request(Method::POST, "/api/v1/tokens");
            if let Some(label) = label {
                request = request.json(&json!({"label": label}));
            }
            let created: Created = client.send_json(request).await?;
            super::print_line(&created.token)
        }
        TokenCommand::List => {
            let list: TokenList = client.get_json("/api/v1/tokens").await?;
            super::print_line("ID\tCREATED\tLAST USED\tREVOKED\tLABEL")?;
            let or_dash = |text: &Option<String>| text.clone().unwrap_or_else(|| "-".into());
            for token in list.tokens {
                super::print_line(&format!(
                    "{}\t{}\t{}\t{}\t{}",
                    token.id,
                    token.created_at,
                    or_dash(&token.last_used_at),
                    or_dash(&token.revoked_at),
                    or_dash(&token.label),
                ))?;
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let _: serde_json::Value = client
                .send_json(client.request(Method::DELETE, &format!("/api/v1/tokens/{id}")))
                .await?;
            super::print_line(&format!("token {id} revoked"))
        }
    }
}
