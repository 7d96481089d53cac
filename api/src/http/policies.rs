//! `/v1/policies`: portability policies, versioned (`PUT` stores a new version when the
//! document changed), and `POST /v1/policies/test`, which evaluates a policy that is not stored.

use super::{ApiError, AppState, Body};
use crate::auth::{Caller, Role, Scope};
use crate::policy::{self, PolicyTest, TestedWorkload};
use crate::store::{AppliedPolicy, Author, PolicyRow, Reader};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use canopy_core::policy::PolicyDocument;
use canopy_core::spec::AppSpec;
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/policies", get(list))
        .route("/policies/{name}", get(show).put(apply))
        .route("/policies/{name}/versions", get(versions))
        .route("/policies/test", post(test))
}

const WRITERS: &[Role] = &[Role::Admin, Role::Developer];
const READERS: &[Role] = &[Role::Admin, Role::Developer, Role::Finance];

pub(super) async fn reader(state: &AppState, caller: &Caller) -> Result<Reader, ApiError> {
    match (caller.role, caller.team_id) {
        (Role::Admin, _) => Ok(Reader::Admin),
        (_, Some(team)) => Ok(Reader::Team(state.store.team_name(team).await?)),
        (_, None) => Err(ApiError::forbidden("this token belongs to no team")),
    }
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<PolicyRow>>, ApiError> {
    caller.require(READERS, "read policies")?;
    let reader = reader(&state, &caller).await?;
    Ok(Json(state.store.policies(&reader).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionParam {
    version: Option<i32>,
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<VersionParam>,
) -> Result<Json<PolicyRow>, ApiError> {
    caller.require(READERS, "read policies")?;
    let reader = reader(&state, &caller).await?;
    Ok(Json(state.store.policy(&reader, &name, q.version).await?))
}

async fn versions(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<PolicyRow>>, ApiError> {
    caller.require(READERS, "read policies")?;
    let reader = reader(&state, &caller).await?;
    Ok(Json(state.store.policy_versions(&reader, &name).await?))
}

/// Parses a policy's JSON form: 422 naming the field when it is not a valid policy.
pub(super) fn parse(body: &[u8]) -> Result<PolicyDocument, ApiError> {
    PolicyDocument::from_json(body).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Stores a new version of the policy when its document changed (201), else nothing (200).
async fn apply(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<AppliedPolicy>), ApiError> {
    caller.require(WRITERS, "write policies")?;
    let body = body.map_err(super::body_rejection)?;
    let document = parse(&body)?;
    if document.name != name {
        return Err(ApiError::invalid(format!(
            "name: {:?} does not match the URL's policy name {name:?}",
            document.name
        )));
    }
    let author = match (caller.role, caller.team_id) {
        (Role::Admin, _) => Author::Admin,
        (_, Some(team)) => Author::Team(team),
        (_, None) => return Err(ApiError::forbidden("this token belongs to no team")),
    };
    let applied = state.store.apply_policy(&caller.actor(), author, &document).await?;
    tracing::info!(policy = %name, version = applied.policy.version, changed = applied.changed, "policy applied");
    Ok((if applied.changed { StatusCode::CREATED } else { StatusCode::OK }, Json(applied)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    /// The policy to test, as `PUT /v1/policies/{name}` takes it.
    policy: serde_json::Value,
    /// An app spec to test it against; default every live workload the caller may see.
    #[serde(default)]
    app: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamParam {
    team: Option<String>,
}

/// Evaluates a policy that is not stored (in place of the stored one of its name, beside the
/// others) against an app spec or every current workload, and answers with its verdicts.
async fn test(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<TeamParam>,
    Body(request): Body<TestRequest>,
) -> Result<Json<PolicyTest>, ApiError> {
    caller.require(READERS, "test policies")?;
    let json = |value: &serde_json::Value| serde_json::to_vec(value).map_err(|e| ApiError::invalid(e.to_string()));
    let document =
        PolicyDocument::from_json(&json(&request.policy)?).map_err(|e| ApiError::invalid(format!("policy.{e}")))?;
    let scope = super::apps::scope(&state, &caller, q.team.as_deref()).await?;
    let buyable = state.buyable.borrow().clone();
    let mut workloads = Vec::new();
    match &request.app {
        Some(app) => {
            let spec = AppSpec::from_json(&json(app)?).map_err(|e| ApiError::invalid(format!("app.{e}")))?;
            let Scope::Team(team) = scope else {
                return Err(ApiError::invalid("team: an admin tests an app spec in a team: pass ?team=NAME"));
            };
            let (inputs, assessment) =
                policy::assess_spec(&state.store, &buyable, team, &spec, Some(&document)).await?;
            workloads.push(TestedWorkload::new(&document, &inputs.team, &spec, &assessment));
        }
        None => {
            for app in state.store.live_specs(scope).await? {
                let (_, assessment) =
                    policy::assess_spec(&state.store, &buyable, app.team_id, &app.spec, Some(&document)).await?;
                workloads.push(TestedWorkload::new(&document, &app.team, &app.spec, &assessment));
            }
        }
    }
    Ok(Json(PolicyTest { policy: document.name, workloads }))
}
