//! `/v1/machines`: the pool as it is.

use super::{ApiError, AppState};
use crate::auth::{Caller, Role};
use crate::store::MachineRow;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new().route("/machines", get(list))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<MachineRow>>, ApiError> {
    caller.require(&[Role::Admin, Role::Developer, Role::Finance], "list machines")?;
    Ok(Json(state.store.machines().await?))
}
