//! `GET /api/v1/masters`: the live masters a worker may connect to (this one first), from the
//! view [`crate::masters`] keeps fresh. No token needed: it names the public WebSocket
//! endpoints every worker is given anyway, and it costs no query.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::AppState;

/// The live masters, this one first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MasterList {
    /// WebSocket URLs (`ws://` or `wss://`): this master's when it advertises one, then the
    /// other live masters sharing its database, oldest first.
    #[schema(example = json!(["wss://grid-a.example/ws", "wss://grid-b.example/ws"]))]
    pub masters: Vec<String>,
}

/// The live masters to connect workers to.
#[utoipa::path(
    get,
    operation_id = "list_masters",
    summary = "List the live masters",
    path = "/api/v1/masters",
    tag = "workers",
    responses(
        (status = 200, description = "This master's WebSocket URL (when it advertises one), then the other live masters'", body = MasterList),
    )
)]
pub async fn list(State(state): State<AppState>) -> Json<MasterList> {
    let mut masters: Vec<String> = state.masters.own().map(str::to_owned).into_iter().collect();
    masters.extend(state.masters.others());
    Json(MasterList { masters })
}
