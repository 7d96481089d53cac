//! `/v1/cost-policy`: how each machine's cost is divided among its tasks (`allocation`:
//! `request` or `max-request-usage`) and whether idle cost is shared back to them
//! (`share_idle`). Everyone may read it; admins change it, for the days metered from then on.

use super::{ApiError, AppState, Body};
use crate::auth::{Caller, Role};
use crate::store::metering::CostPolicy;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use canopy_core::cost::{AllocationMode, IdlePolicy};
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new().route("/cost-policy", get(show).put(set))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Policy {
    allocation: String,
    share_idle: bool,
}

fn shown(policy: CostPolicy) -> Json<Policy> {
    Json(Policy { allocation: policy.allocation_name().into(), share_idle: policy.share_idle() })
}

async fn show(State(state): State<AppState>, caller: Caller) -> Result<Json<Policy>, ApiError> {
    caller.require(&[Role::Admin, Role::Finance, Role::Developer], "read the cost policy")?;
    Ok(shown(state.store.cost_policy().await?))
}

async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Body(policy): Body<Policy>,
) -> Result<Json<Policy>, ApiError> {
    caller.require(&[Role::Admin], "change the cost policy")?;
    let mode = match policy.allocation.as_str() {
        "request" => AllocationMode::Request,
        "max-request-usage" => AllocationMode::MaxRequestUsage,
        other => {
            return Err(ApiError::invalid(format!("allocation: {other:?} is not request or max-request-usage")));
        }
    };
    let idle = if policy.share_idle { IdlePolicy::ShareBack } else { IdlePolicy::Report };
    let policy = CostPolicy { mode, idle };
    state.store.set_cost_policy(&caller.actor(), policy).await?;
    Ok(shown(policy))
}
