//! `/v1/teams/{team}/budget`: a team's monthly budget and the webhook its alerts go to
//! (admins). Where spend stands against it: `GET /v1/reports/budgets`.

use super::{ApiError, AppState, Body};
use crate::auth::{Caller, Role};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use canopy_core::policy::Money;
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new().route("/teams/{team}/budget", put(set).delete(remove))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Budget {
    /// Per calendar month (UTC), as a decimal string: "2500.00".
    monthly: Money,
    /// POSTed (JSON) once each time the month's forecast crosses the budget.
    webhook_url: Option<String>,
}

async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Path(team): Path<String>,
    Body(budget): Body<Budget>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin], "set budgets")?;
    if let Some(url) = &budget.webhook_url {
        let parsed = reqwest::Url::parse(url).map_err(|e| ApiError::invalid(format!("webhook_url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ApiError::invalid("webhook_url: must be an http or https URL"));
        }
    }
    state.store.set_budget(&caller.actor(), &team, Some(budget.monthly.0), budget.webhook_url.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(team): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin], "remove budgets")?;
    state.store.set_budget(&caller.actor(), &team, None, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
