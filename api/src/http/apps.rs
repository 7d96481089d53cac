//! `/v1/apps`: deploy, inspect, scale, delete apps, and read their logs.

use super::{ApiError, AppState, Body};
use crate::auth::{Caller, Role, Scope};
use crate::policy::{self, Deployed, DryRun, Explanation};
use crate::store::{AppDetail, AppSummary, LogTarget};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use canopy_core::policy::Binding;
use canopy_core::spec::AppSpec;
use serde::Deserialize;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps", get(list))
        .route("/apps/{name}", get(show).put(deploy).delete(delete))
        .route("/apps/{name}/scale", post(scale))
        .route("/apps/{name}/rollback", post(rollback))
        .route("/apps/{name}/promote", post(promote))
        .route("/apps/{name}/endpoints", get(endpoints))
        .route("/apps/{name}/logs", get(logs))
        .route("/apps/{name}/dry-run", post(dry_run))
        .route("/apps/{name}/explain", get(explain))
}

const WRITERS: &[Role] = &[Role::Admin, Role::Developer];
const READERS: &[Role] = &[Role::Admin, Role::Developer, Role::Finance];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamParam {
    team: Option<String>,
}

/// The teams a request acts on: its own for team tokens; any, or the one named, for admins.
pub(super) async fn scope(state: &AppState, caller: &Caller, team: Option<&str>) -> Result<Scope, ApiError> {
    match (caller.role, team) {
        (Role::Admin, Some(team)) => Ok(Scope::Team(state.store.team_by_name(team).await?.id)),
        _ => Ok(caller.scope()),
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<TeamParam>,
) -> Result<Json<Vec<AppSummary>>, ApiError> {
    caller.require(READERS, "list apps")?;
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    Ok(Json(state.store.apps(scope).await?))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TeamParam>,
) -> Result<Json<AppDetail>, ApiError> {
    caller.require(READERS, "read apps")?;
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    Ok(Json(state.store.app(scope, &name).await?))
}

/// The spec in a deploy or dry-run body, and the team it goes to.
async fn deploy_request(
    state: &AppState,
    caller: &Caller,
    name: &str,
    team: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(AppSpec, Uuid), ApiError> {
    let body = body.map_err(super::body_rejection)?;
    let spec = AppSpec::from_json(&body)?;
    if spec.name != name {
        return Err(ApiError::invalid(format!("name: {:?} does not match the URL's app name {name:?}", spec.name)));
    }
    match scope(state, caller, team).await? {
        Scope::Team(team) => Ok((spec, team)),
        _ => Err(ApiError::invalid("team: an admin deploys into a team: pass ?team=NAME")),
    }
}

/// Creates or updates an app from its spec (JSON), once the team's policies accept it: a hard
/// policy's refusal is a 422 naming the policy, the rule and the numbers; soft ones come back
/// as warnings. Unchanged specs are a no-op (200); new apps and new versions answer 201.
async fn deploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TeamParam>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    caller.require(WRITERS, "deploy apps")?;
    let (spec, team) = deploy_request(&state, &caller, &name, q.team.as_deref(), body).await?;
    let buyable = state.buyable.borrow().clone();
    let (binding, portability, warnings) = match policy::admit(&state.store, &buyable, team, &spec).await? {
        Some(assessment) => {
            (assessment.binding.clone(), policy::portability(&assessment), policy::warnings(&assessment))
        }
        None => (Binding::default(), String::new(), Vec::new()),
    };
    let uploaded: Vec<String> = spec.artifacts.iter().filter_map(|a| a.uploaded().map(str::to_string)).collect();
    if let Some(missing) = state.store.missing_artifacts(&uploaded).await?.first() {
        let index = spec.artifacts.iter().position(|a| a.uploaded() == Some(missing.as_str())).unwrap_or_default();
        return Err(ApiError::invalid(format!(
            "artifacts[{index}].url: canopy:{missing} has not been uploaded (PUT /v1/artifacts/{missing} first)"
        )));
    }
    let (app, changed) =
        state.store.apply_app_bound(&caller.actor(), team, &spec, Some((&binding, &portability))).await?;
    tracing::info!(app = %name, version = app.summary.version, changed, "app applied");
    let status = if changed { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(Deployed { app, warnings })))
}

/// What `PUT /v1/apps/{name}` would do with this spec, with nothing stored.
async fn dry_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TeamParam>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DryRun>, ApiError> {
    caller.require(READERS, "dry-run deploys")?;
    let (spec, team) = deploy_request(&state, &caller, &name, q.team.as_deref(), body).await?;
    let buyable = state.buyable.borrow().clone();
    let (inputs, assessment) = policy::assess_spec(&state.store, &buyable, team, &spec, None).await?;
    let names: Vec<(Uuid, String)> = state.store.machines().await?.into_iter().map(|m| (m.id, m.name)).collect();
    Ok(Json(DryRun::new(&spec, &inputs.team, &assessment, &names)))
}

/// Why the app runs where it does (and what it would cost elsewhere), or why it waits.
async fn explain(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TeamParam>,
) -> Result<Json<Explanation>, ApiError> {
    caller.require(READERS, "read apps")?;
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    let app = state.store.app(scope, &name).await?;
    let live =
        state.store.live_specs(scope).await?.into_iter().find(|a| a.app_id == app.summary.id).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("app {name:?} has ended: nothing to explain"))
        })?;
    let buyable = state.buyable.borrow().clone();
    Ok(Json(Explanation::new(&state.store, &buyable, &live).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleRequest {
    instances: u32,
}

async fn scale(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TeamParam>,
    Body(request): Body<ScaleRequest>,
) -> Result<Json<AppDetail>, ApiError> {
    caller.require(WRITERS, "scale apps")?;
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    let buyable = state.buyable.borrow().clone();
    policy::admit_scale(&state.store, &buyable, scope, &name, request.instances).await?;
    Ok(Json(state.store.scale_app(&caller.actor(), scope, &name, request.instances).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsQuery {
    team: Option<String>,
    /// Which of the app's named ports (default: its first).
    port: Option<String>,
}

/// The app's healthy instances and where they answer (404 for an app the caller cannot see).
async fn endpoints(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<EndpointsQuery>,
) -> Result<Json<Vec<crate::store::Endpoint>>, ApiError> {
    caller.require(READERS, "read endpoints")?;
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    let app = state.store.app(scope, &name).await?;
    if let Some(port) = &q.port
        && !app.spec.ports.contains(port)
    {
        return Err(ApiError::invalid(format!("port: app {name:?} has no port named {port:?}")));
    }
    Ok(Json(state.store.endpoints(scope, &name, q.port.as_deref()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The version to go back to; default the last one fully rolled out.
    #[serde(default)]
    to: Option<i32>,
}

async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TeamParam>,
    Body(request): Body<RollbackRequest>,
) -> Result<Json<AppDetail>, ApiError> {
    caller.require(WRITERS, "roll back apps")?;
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    Ok(Json(state.store.rollback_app(&caller.actor(), scope, &name, request.to).await?))
}

async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TeamParam>,
) -> Result<Json<AppDetail>, ApiError> {
    caller.require(WRITERS, "promote rollouts")?;
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    Ok(Json(state.store.promote_app(&caller.actor(), scope, &name).await?))
}

async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<TeamParam>,
) -> Result<StatusCode, ApiError> {
    caller.require(WRITERS, "delete apps")?;
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    state.store.delete_app(&caller.actor(), scope, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    team: Option<String>,
    #[serde(default)]
    instance: u32,
    #[serde(default = "default_stream")]
    stream: String,
    /// Bytes from the end of the log (default 64 KiB).
    tail: Option<u64>,
    /// Stream the tail, then what the task writes, until it ends or the client hangs up.
    #[serde(default)]
    follow: bool,
}

fn default_stream() -> String {
    "stdout".into()
}

/// Reads a task's log from its machine's agent. The control service is the only client of
/// the agents' API, so users never need network access to machines. With `follow` the agent's
/// streamed answer is passed on chunk by chunk, never held whole.
async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    caller.require(READERS, "read logs")?;
    if q.stream != "stdout" && q.stream != "stderr" {
        return Err(ApiError::invalid("stream: must be stdout or stderr"));
    }
    let scope = scope(&state, &caller, q.team.as_deref()).await?;
    let target = state.store.log_target(scope, &name, q.instance).await?;
    let tail = q.tail.unwrap_or(64 * 1024);
    if !q.follow {
        return Ok(log_tail(&state, &target, &q.stream, tail).await?.into_response());
    }
    // The shared agents client has a total timeout, which would cut a follow short.
    let client = follow_client().map_err(|e| unreachable(&target, e))?;
    let response = agent_log(&client, &target, &q.stream, tail, true).await?;
    tracing::info!(app = %name, task = %target.task_id, stream = %q.stream, "following logs");
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")];
    Ok((headers, axum::body::Body::new(reqwest::Body::from(response))).into_response())
}

/// The last `tail` bytes of a task's `stream` (stdout or stderr), from its machine's agent.
/// The web UI's log panel reads logs through this too.
pub(crate) async fn log_tail(
    state: &AppState,
    target: &LogTarget,
    stream: &str,
    tail: u64,
) -> Result<String, ApiError> {
    let response = agent_log(&state.agents, target, stream, tail, false).await?;
    response.text().await.map_err(|e| unreachable(target, e))
}

/// Asks the task's agent for its log: the last `tail` bytes, and on with `follow`.
async fn agent_log(
    client: &reqwest::Client,
    target: &LogTarget,
    stream: &str,
    tail: u64,
    follow: bool,
) -> Result<reqwest::Response, ApiError> {
    let url = format!("http://{}/v1/tasks/{}/logs", target.agent_endpoint, target.task_id);
    let mut query = vec![("stream", stream.to_string()), ("tail", tail.to_string())];
    if follow {
        query.push(("follow", "true".into()));
    }
    let response = client
        .get(url)
        .bearer_auth(&target.control_key)
        .query(&query)
        .send()
        .await
        .map_err(|e| unreachable(target, e))?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(ApiError::new(StatusCode::BAD_GATEWAY, "agent_error", format!("the agent answered {status}")));
    }
    Ok(response)
}

fn unreachable(target: &LogTarget, error: reqwest::Error) -> ApiError {
    tracing::warn!(%error, endpoint = %target.agent_endpoint, "agent unreachable for logs");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "agent_unreachable",
        format!("the agent on {} did not answer", target.agent_endpoint),
    )
}

/// A client for one follow: it may connect for 10 s, then the stream lasts as long as the task.
fn follow_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10)).build()
}
