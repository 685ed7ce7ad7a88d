//! Volunteers' credit and display names: `GET /api/v1/volunteers` (the leaderboard, public),
//! `GET /api/v1/volunteers/me` and `PUT /api/v1/volunteers/me` (one volunteer's own figures and
//! display name).
//!
//! Volunteers have no bearer token: a volunteer is its worker identity (the `worker_id` of its
//! hello, kept in the browser's localStorage or the native worker's identity file), sent in the
//! `X-Grid-Volunteer` header. Knowing the identity is what lets one set its display name, so the
//! identity is never shown to others: the leaderboard shows the display name, or a pseudonym
//! derived from the identity ([`crate::dashboard::pseudonym`]).
//!
//! Credit is verified work: each valid result earns its chunk's compute time (see
//! [`crate::store::insights::Insights::credits`]), in seconds.
//!
//! Display names are validated here (1 to [`DISPLAY_NAME_MAX_CHARS`] characters after trimming,
//! no control, formatting or invisible characters, no whitespace but plain spaces) and are plain
//! text everywhere: JSON in the API, `textContent` in the pages, never HTML.

use axum::Json;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::json::AppJson;
use crate::AppState;
use crate::dashboard::pseudonym;
use crate::error::{Error, Result};
use crate::store::insights::Credit;

/// The header carrying a volunteer's worker identity.
pub const VOLUNTEER_HEADER: &str = "x-grid-volunteer";
/// Longest display name, in characters (Unicode scalar values).
pub const DISPLAY_NAME_MAX_CHARS: usize = 32;
/// Leaderboard entries by default, and at most.
const LEADERBOARD_DEFAULT: usize = 20;
const LEADERBOARD_MAX: usize = 100;

/// The worker identity of the volunteer calling (from `X-Grid-Volunteer`).
#[derive(Debug, Clone)]
pub struct Volunteer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Volunteer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        parts
            .headers
            .get(VOLUNTEER_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|id| grid_protocol::is_valid_worker_id(id))
            .map(|id| Volunteer(id.to_owned()))
            .ok_or(Error::NoVolunteerIdentity)
    }
}

/// One line of the leaderboard.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LeaderboardEntry {
    /// 1 for the most credit.
    pub rank: usize,
    /// What to show: the display name, or else the pseudonym.
    pub name: String,
    /// The name the volunteer chose, if any (plain text: escape it when writing HTML).
    pub display_name: Option<String>,
    /// A stable public name derived from the worker identity.
    pub pseudonym: String,
    /// Verified compute time, in seconds.
    pub credit_seconds: f64,
    /// Valid results returned.
    pub results: i64,
}

/// `GET /api/v1/volunteers`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Leaderboard {
    /// The top volunteers by credit.
    pub volunteers: Vec<LeaderboardEntry>,
    /// Volunteers with any credit.
    pub total: usize,
}

/// A volunteer's own figures.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VolunteerView {
    /// The public name derived from the identity (shown when there is no display name).
    pub pseudonym: String,
    /// The name the volunteer chose, if any.
    pub display_name: Option<String>,
    /// Verified compute time, in seconds.
    pub credit_seconds: f64,
    /// Valid results returned.
    pub results: i64,
    /// Place on the leaderboard (none without credit).
    pub rank: Option<usize>,
}

/// The body of `PUT /api/v1/volunteers/me`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDisplayName {
    /// The new display name; `null` removes it.
    pub display_name: Option<String>,
}

fn credit_seconds(credit_ms: f64) -> f64 {
    (credit_ms / 100.0).round() / 10.0
}

/// The top `limit` entries of `credits` (already sorted, highest first).
pub fn leaderboard(credits: &[Credit], limit: usize) -> Vec<LeaderboardEntry> {
    credits
        .iter()
        .take(limit)
        .enumerate()
        .map(|(place, credit)| {
            let pseudonym = pseudonym(&credit.worker_id);
            LeaderboardEntry {
                rank: place + 1,
                name: credit
                    .display_name
                    .clone()
                    .unwrap_or_else(|| pseudonym.clone()),
                display_name: credit.display_name.clone(),
                pseudonym,
                credit_seconds: credit_seconds(credit.credit_ms),
                results: credit.results,
            }
        })
        .collect()
}

/// Characters that render as nothing or reorder text around them: zero-width and joiner
/// characters, bidirectional controls, fillers, tags, noncharacters and private use.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFF}' | '\u{E000}'..='\u{F8FF}' | '\u{E0000}'..='\u{E0FFF}'
        | '\u{F0000}'..='\u{10FFFF}')
}

/// A display name as stored: trimmed and checked (see the module documentation).
pub fn validate_display_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::invalid(
            "invalid_field",
            "display_name must not be blank (send null to remove it)",
        ));
    }
    let chars = name.chars().count();
    if chars > DISPLAY_NAME_MAX_CHARS {
        return Err(Error::invalid(
            "invalid_field",
            format!("display_name may be at most {DISPLAY_NAME_MAX_CHARS} characters, got {chars}"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| c.is_control() || is_invisible(c) || (c.is_whitespace() && c != ' '))
    {
        return Err(Error::invalid(
            "invalid_field",
            format!(
                "display_name may not contain control, invisible or formatting characters \
                 (found U+{:04X})",
                u32::from(bad)
            ),
        ));
    }
    if name.contains("  ") {
        return Err(Error::invalid(
            "invalid_field",
            "display_name may not contain consecutive spaces",
        ));
    }
    Ok(name.to_owned())
}

/// Leaderboard `?limit=N` (1 to 100, default 20).
fn parse_limit(query: Option<&str>) -> Result<usize> {
    let mut limit = LEADERBOARD_DEFAULT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "limit" {
            limit = value
                .parse()
                .ok()
                .filter(|n| (1..=LEADERBOARD_MAX).contains(n))
                .ok_or_else(|| {
                    Error::invalid(
                        "invalid_field",
                        format!("limit must be between 1 and {LEADERBOARD_MAX}"),
                    )
                })?;
        }
    }
    Ok(limit)
}

/// The top volunteers by credit.
#[utoipa::path(
    get,
    operation_id = "leaderboard",
    path = "/api/v1/volunteers",
    tag = "volunteers",
    params(("limit" = Option<usize>, Query, description = "Entries (1 to 100, default 20)")),
    responses(
        (status = 200, description = "The leaderboard, highest credit first", body = Leaderboard),
        (status = 422, description = "Bad limit", body = super::openapi::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Leaderboard>> {
    let limit = parse_limit(query.as_deref())?;
    let credits = state.dashboard.credits().await?;
    Ok(Json(Leaderboard {
        volunteers: leaderboard(&credits, limit),
        total: credits.len(),
    }))
}

async fn view(state: &AppState, worker_id: &str) -> Result<VolunteerView> {
    let credits = state.dashboard.credits().await?;
    let place = credits.iter().position(|c| c.worker_id == worker_id);
    let display_name = state.insights.display_name(worker_id).await?;
    let (credit_ms, results) = place
        .map(|i| (credits[i].credit_ms, credits[i].results))
        .unwrap_or((0.0, 0));
    Ok(VolunteerView {
        pseudonym: pseudonym(worker_id),
        display_name,
        credit_seconds: credit_seconds(credit_ms),
        results,
        rank: place.map(|i| i + 1),
    })
}

/// The calling volunteer's credit, rank and display name.
#[utoipa::path(
    get,
    operation_id = "get_volunteer",
    path = "/api/v1/volunteers/me",
    tag = "volunteers",
    security(("volunteer" = [])),
    responses(
        (status = 200, description = "The volunteer's figures (zero before any valid result)", body = VolunteerView),
        (status = 401, description = "No valid worker identity in X-Grid-Volunteer", body = super::openapi::ErrorBody),
    )
)]
pub async fn me(
    State(state): State<AppState>,
    volunteer: Volunteer,
) -> Result<Json<VolunteerView>> {
    Ok(Json(view(&state, &volunteer.0).await?))
}

/// Set or remove the calling volunteer's display name.
#[utoipa::path(
    put,
    operation_id = "set_display_name",
    path = "/api/v1/volunteers/me",
    tag = "volunteers",
    security(("volunteer" = [])),
    request_body = SetDisplayName,
    responses(
        (status = 200, description = "The volunteer's figures with the new name", body = VolunteerView),
        (status = 401, description = "No valid worker identity in X-Grid-Volunteer", body = super::openapi::ErrorBody),
        (status = 422, description = "The name is blank, too long, or holds control or invisible characters", body = super::openapi::ErrorBody),
    )
)]
pub async fn set_name(
    State(state): State<AppState>,
    volunteer: Volunteer,
    AppJson(body): AppJson<SetDisplayName>,
) -> Result<Json<VolunteerView>> {
    let name = body
        .display_name
        .as_deref()
        .map(validate_display_name)
        .transpose()?;
    state
        .insights
        .set_display_name(&volunteer.0, name.as_deref())
        .await?;
    state.dashboard.rename(&volunteer.0, name.as_deref()).await;
    Ok(Json(view(&state, &volunteer.0).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_checked() {
        for good in [
            "Ada",
            "  Ada Lovelace ",
            "<b>&amp;</b>",
            "Zoë ✓ 計算",
            "a\u{301}",
        ] {
            assert!(validate_display_name(good).is_ok(), "{good:?}");
        }
        assert_eq!(
            validate_display_name("  Ada Lovelace ").ok().as_deref(),
            Some("Ada Lovelace")
        );
        let too_long = "x".repeat(DISPLAY_NAME_MAX_CHARS + 1);
        let bad = [
            "",
            "   ",
            too_long.as_str(),
            "tab\there",
            "new\nline",
            "nul\0",
            "bidi\u{202E}evil",
            "zero\u{200B}width",
            "bom\u{FEFF}",
            "two  spaces",
            "nbsp\u{00A0}space",
            "private\u{E000}",
        ];
        for name in bad {
            assert!(validate_display_name(name).is_err(), "{name:?}");
        }
        // Exactly the limit, in characters not bytes.
        assert!(validate_display_name(&"é".repeat(DISPLAY_NAME_MAX_CHARS)).is_ok());
    }

    #[test]
    fn leaderboard_ranks_and_names() {
        let credits = vec![
            Credit {
                worker_id: "w1".into(),
                display_name: Some("Ada".into()),
                results: 3,
                credit_ms: 12_345.0,
            },
            Credit {
                worker_id: "w2".into(),
                display_name: None,
                results: 1,
                credit_ms: 49.0,
            },
        ];
        let board = leaderboard(&credits, 10);
        assert_eq!(board.len(), 2);
        assert_eq!(board[0].rank, 1);
        assert_eq!(board[0].name, "Ada");
        assert_eq!(board[0].credit_seconds, 12.3);
        assert_eq!(board[1].name, pseudonym("w2"));
        assert_eq!(board[1].credit_seconds, 0.0);
        assert_eq!(leaderboard(&credits, 1).len(), 1);
    }

    #[test]
    fn limits_are_parsed() {
        assert_eq!(parse_limit(None).ok(), Some(LEADERBOARD_DEFAULT));
        assert_eq!(parse_limit(Some("limit=5")).ok(), Some(5));
        assert_eq!(parse_limit(Some("x=1&limit=100")).ok(), Some(100));
        for bad in ["limit=0", "limit=101", "limit=abc", "limit="] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
