//! `grid upload module.wasm`: `POST /api/v1/modules` with the raw bytes as
//! `application/wasm`, then print the id the master returns (for `grid submit --module`).

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::Value;

use crate::args::UploadArgs;
use crate::client::Client;
use crate::error::{Error, Result};

/// Every WebAssembly binary starts with these four bytes.
const WASM_MAGIC: &[u8] = b"\0asm";

#[derive(Deserialize)]
struct Uploaded {
    id: Value,
}

/// Upload the module and print its id.
pub async fn run(client: &Client, args: UploadArgs) -> Result<()> {
    let bytes = tokio::fs::read(&args.module)
        .await
        .map_err(|error| Error::file(&args.module, error))?;
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(Error::Inputs {
            source_name: args.module.display().to_string(),
            message: "not a WebAssembly binary module (it does not start with \\0asm)".into(),
        });
    }
    let request = client
        .request(Method::POST, "/api/v1/modules")
        .header(CONTENT_TYPE, "application/wasm")
        .body(bytes);
    let uploaded: Uploaded = client.send_json(request).await?;
    super::print_line(&super::id_text(&uploaded.id))
}
