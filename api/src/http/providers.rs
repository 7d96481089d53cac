//! `/v1/providers`: the providers of the pool, and evacuating one (preview, start, progress,
//! abort).

use super::{ApiError, AppState, Body};
use crate::auth::{Caller, Role};
use crate::store::{EvacuationView, ProviderRow};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use canopy_core::quantity::Millis;
use serde::Deserialize;
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/providers", get(list))
        .route("/providers/{name}/evacuation", get(show).post(evacuate).delete(abort))
}

/// How long a job's task on a drained machine may run on before it is re-queued, by default.
const DEFAULT_BATCH_GRACE: Millis = Millis(600_000);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvacuateRequest {
    /// Only show the plan; change nothing.
    #[serde(default)]
    dry_run: bool,
    /// e.g. `"10m"`; `"0s"` re-queues batch tasks as soon as their machine drains.
    #[serde(default)]
    batch_grace: Option<Millis>,
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<ProviderRow>>, ApiError> {
    caller.require(&[Role::Admin, Role::Developer, Role::Finance], "list providers")?;
    Ok(Json(state.store.providers(&offerings(&state)).await?))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EvacuationView>, ApiError> {
    caller.require(&[Role::Admin, Role::Developer, Role::Finance], "see evacuations")?;
    Ok(Json(state.store.evacuation(&name).await?))
}

/// `dry_run`: the plan (200), nothing stored. Otherwise the evacuation starts (201).
async fn evacuate(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(request): Body<EvacuateRequest>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin], "evacuate a provider")?;
    // What can be bought now, as the controllers last saw it (an evacuated provider sells
    // nothing, but still has machines or an evacuation).
    let buyable = state.buyable.borrow().clone();
    if !offerings(&state).contains_key(&name) && !state.store.provider_has_machines(&name).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("provider {name:?} sells nothing here and has no machines"),
        ));
    }
    let (catalog, quotas) = (buyable.catalog, buyable.quotas);
    if request.dry_run {
        return Ok(Json(state.store.evacuation_plan(&name, &catalog, &quotas).await?).into_response());
    }
    let grace = request.batch_grace.unwrap_or(DEFAULT_BATCH_GRACE).as_std();
    let started = state.store.start_evacuation(&caller.actor(), &name, grace, &catalog, &quotas).await?;
    Ok((StatusCode::CREATED, Json(started)).into_response())
}

/// Aborts a running evacuation, or lifts a completed one: the provider takes work again.
async fn abort(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EvacuationView>, ApiError> {
    caller.require(&[Role::Admin], "abort an evacuation")?;
    Ok(Json(state.store.end_evacuation(&caller.actor(), &name).await?))
}

/// How many offerings each provider sells now.
fn offerings(state: &AppState) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for offering in &state.buyable.borrow().catalog.offerings {
        *counts.entry(offering.provider.clone()).or_default() += 1;
    }
    counts
}
