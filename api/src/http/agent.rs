//! `/v1/agent/*`: the agent protocol (see `canopy_core::wire`).

use super::{ApiError, AppState, Body};
use crate::auth::{Caller, Role};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use canopy_core::wire::{HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse};

pub fn router() -> Router<AppState> {
    Router::new().route("/agent/join", post(join)).route("/agent/heartbeat", post(heartbeat))
}

/// Authenticated by the single-use join token in the body, not by a bearer token.
async fn join(
    State(state): State<AppState>,
    Body(request): Body<JoinRequest>,
) -> Result<(StatusCode, Json<JoinResponse>), ApiError> {
    let response = state.store.join(&request).await?;
    tracing::info!(machine = %request.name, id = %response.machine_id, "machine joined");
    Ok((StatusCode::CREATED, Json(response)))
}

async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    caller.require(&[Role::Agent], "send heartbeats")?;
    let machine = caller.machine_id.ok_or_else(|| ApiError::forbidden("agent token has no machine"))?;
    let interval = state.heartbeat_interval.as_millis() as u64;
    Ok(Json(state.store.heartbeat(machine, &request, interval).await?))
}
