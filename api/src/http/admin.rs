//! `/v1/teams`, `/v1/tokens`, `/v1/join-tokens`, `/v1/events`: organisation administration
//! and the audit log.

use super::{ApiError, AppState, Body};
use crate::auth::{Caller, Role};
use crate::store::{EventRow, NewToken, TeamRow};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/teams", get(teams).post(create_team))
        .route("/tokens", post(create_token))
        .route("/join-tokens", post(create_join_token))
        .route("/events", get(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTeam {
    name: String,
}

async fn create_team(
    State(state): State<AppState>,
    caller: Caller,
    Body(team): Body<NewTeam>,
) -> Result<(StatusCode, Json<TeamRow>), ApiError> {
    caller.require(&[Role::Admin], "create teams")?;
    canopy_core::spec::validate_name("name", &team.name)?;
    Ok((StatusCode::CREATED, Json(state.store.create_team(&caller.actor(), &team.name).await?)))
}

async fn teams(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<TeamRow>>, ApiError> {
    caller.require(&[Role::Admin], "list teams")?;
    Ok(Json(state.store.teams().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    name: String,
    role: Role,
    team: Option<String>,
}

async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<TokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    caller.require(&[Role::Admin], "create tokens")?;
    if request.name.trim().is_empty() {
        return Err(ApiError::invalid("name: must not be empty"));
    }
    let token = state.store.create_token(&caller.actor(), &request.name, request.role, request.team.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinTokenRequest {
    /// How long the token may be used (default one hour).
    #[serde(default = "default_ttl")]
    ttl_seconds: u32,
}

fn default_ttl() -> u32 {
    3600
}

#[derive(Serialize)]
struct JoinToken {
    token: String,
}

async fn create_join_token(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<JoinTokenRequest>,
) -> Result<(StatusCode, Json<JoinToken>), ApiError> {
    caller.require(&[Role::Admin], "create join tokens")?;
    if request.ttl_seconds == 0 {
        return Err(ApiError::invalid("ttl_seconds: must be > 0"));
    }
    let ttl = chrono::Duration::seconds(i64::from(request.ttl_seconds));
    let token = state.store.create_join_token(&caller.actor(), ttl).await?;
    Ok((StatusCode::CREATED, Json(JoinToken { token })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<EventQuery>,
) -> Result<Json<Vec<EventRow>>, ApiError> {
    caller.require(&[Role::Admin, Role::Developer, Role::Finance], "read events")?;
    let limit = i64::from(q.limit.clamp(1, 1000));
    Ok(Json(state.store.events(caller.scope().team_filter(), limit).await?))
}
