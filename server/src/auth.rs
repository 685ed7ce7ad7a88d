//! Bearer tokens: how they are made, stored (as SHA-256 digests only) and checked.
//!
//! The admin token comes from configuration; submitter tokens are created by the admin through
//! `POST /api/v1/tokens` and stored hashed. [`Caller`] is the extractor every `/api/` handler
//! takes: it answers 401 for a missing or unknown token before the handler runs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::Error;
use crate::store::Owner;

/// SHA-256 of a token, the only form in which tokens are kept.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: `grid_` and 256 random bits in hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("grid_{}", hex::encode(bytes))
}

/// Known-good submitter token digests, so most requests skip the database. Tokens are never
/// deleted, so a cached entry cannot go stale.
#[derive(Debug, Default, Clone)]
pub struct TokenCache {
    known: Arc<RwLock<HashMap<[u8; 32], i64>>>,
}

impl TokenCache {
    fn get(&self, digest: &[u8; 32]) -> Option<i64> {
        self.known.read().ok()?.get(digest).copied()
    }

    fn insert(&self, digest: [u8; 32], id: i64) {
        if let Ok(mut known) = self.known.write() {
            known.insert(digest, id);
        }
    }
}

/// The authenticated caller of an `/api/` request.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Owner);

impl Caller {
    /// Whether the caller holds the admin token.
    pub fn is_admin(&self) -> bool {
        self.0 == Owner::Admin
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .ok_or(Error::Unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(Error::Unauthorized)?;
        let digest = hash_token(token);
        if state.admin_token_hash.as_ref() == Some(&digest) {
            return Ok(Caller(Owner::Admin));
        }
        if let Some(id) = state.tokens.get(&digest) {
            return Ok(Caller(Owner::Submitter(id)));
        }
        match state.store.find_token(&digest).await? {
            Some(id) => {
                state.tokens.insert(digest, id);
                Ok(Caller(Owner::Submitter(id)))
            }
            None => Err(Error::Unauthorized),
        }
    }
}
