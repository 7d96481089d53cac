//! The HTTP API: `/v1` JSON resources, `/healthz`, `/openapi.json`, and the web UI's
//! `/ui/` pages (`crate::ui`).
//!
//! One module per resource, each with a `router()`. Handlers parse input into core types,
//! check the caller's role, call the store, and shape the answer; they hold no state.

mod admin;
mod agent;
mod apps;
mod artifacts;
mod cost_policy;
pub mod entry;
mod error;
mod hosts;
mod machines;
mod policies;
mod providers;
mod reports;

pub(crate) use apps::log_tail;
pub use error::ApiError;
pub(crate) use reports::{RawParams as ReportParams, report};

use crate::auth::{Caller, Role};
use crate::store::Store;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::time::Duration;

/// Largest request body accepted: specs and heartbeats are small.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub heartbeat_interval: Duration,
    /// Client for calls to agents (logs).
    pub agents: reqwest::Client,
    /// What can be bought, for policy assessments (the controllers publish it).
    pub buyable: tokio::sync::watch::Receiver<crate::controllers::Buyable>,
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .merge(admin::router())
        .merge(apps::router())
        .merge(artifacts::router())
        .merge(machines::router())
        .merge(hosts::router())
        .merge(policies::router())
        .merge(agent::router())
        .merge(reports::router())
        .merge(providers::router())
        .merge(cost_policy::router());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .nest("/v1", v1)
        .merge(crate::ui::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> Result<&'static str, ApiError> {
    state.store.ping().await?;
    Ok("ok")
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization header must be: Bearer <token>"))?;
        state.store.authenticate(token.trim()).await?.ok_or_else(|| ApiError::unauthorized("token is not valid"))
    }
}

impl Caller {
    /// Refuses callers whose role is not in `roles`.
    pub fn require(&self, roles: &[Role], action: &str) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("a {} token may not {action}", self.role.as_str())))
        }
    }
}

/// `Json` with our error shape: malformed bodies are 400, well-formed but wrong ones 422,
/// and the message names the offending field.
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ),
        JsonRejection::BytesRejection(e) => body_rejection(e),
        other => ApiError::bad_request(other.body_text()),
    }
}

/// A body that could not be read: too large (413) or otherwise unreadable (400).
fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else {
        ApiError::bad_request(rejection.body_text())
    }
}
