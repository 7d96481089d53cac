//! `/v1/artifacts/{sha256}`: files developers upload for their specs' artifacts (what
//! `canopy deploy` does with a local file), and `/v1/agent/artifacts/{sha256}`, where agents
//! fetch them. Content-addressed: the URL names the SHA-256 of the bytes, an upload whose bytes
//! hash otherwise is refused, and uploading the same file twice stores it once.

use super::{ApiError, AppState};
use crate::auth::{Caller, Role};
use crate::store::ArtifactRow;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use canopy_core::artifact::is_sha256;
use futures_util::StreamExt;

/// Largest artifact accepted.
pub const MAX_ARTIFACT_BYTES: i64 = 1 << 30;
/// Chunks read from the store while streaming one to an agent.
const CHUNK: i32 = 1 << 20;

pub fn router() -> Router<AppState> {
    Router::new().route("/artifacts/{sha256}", get(show).put(upload)).route("/agent/artifacts/{sha256}", get(download))
}

fn digest(sha256: &str) -> Result<(), ApiError> {
    if is_sha256(sha256) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("sha256: {sha256:?} must be 64 lowercase hex digits")))
    }
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
) -> Result<Json<ArtifactRow>, ApiError> {
    caller.require(&[Role::Admin, Role::Developer], "read artifacts")?;
    digest(&sha256)?;
    Ok(Json(state.store.artifact(&sha256).await?))
}

/// Streams the body into the store; 201 when new, 200 when the file was already there.
async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<ArtifactRow>), ApiError> {
    caller.require(&[Role::Admin, Role::Developer], "upload artifacts")?;
    digest(&sha256)?;
    let mut upload = state.store.begin_artifact(&sha256).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if upload.size() + chunk.len() as i64 > MAX_ARTIFACT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("an artifact may be at most {MAX_ARTIFACT_BYTES} bytes"),
            ));
        }
        upload.write(&chunk).await?;
    }
    let size = upload.size();
    let created = upload.finish(&caller.actor(), caller.team_id).await?;
    tracing::info!(%sha256, size, created, "artifact uploaded");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(ArtifactRow { sha256, size })))
}

/// Streams an uploaded artifact to an agent, a chunk at a time.
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Agent], "fetch artifacts for tasks")?;
    digest(&sha256)?;
    let artifact = state.store.artifact(&sha256).await?;
    let size = artifact.size;
    let chunks = futures_util::stream::try_unfold(0i64, move |offset| {
        let (store, sha256) = (state.store.clone(), sha256.clone());
        async move {
            if offset >= size {
                return Ok(None);
            }
            let chunk = store.artifact_chunk(&sha256, offset, CHUNK).await.map_err(std::io::Error::other)?;
            if chunk.is_empty() {
                return Err(std::io::Error::other(format!("artifact {sha256} ends before its recorded size")));
            }
            let next = offset + chunk.len() as i64;
            Ok(Some((chunk, next)))
        }
    });
    Ok(([(header::CONTENT_LENGTH, size.to_string())], Body::from_stream(chunks)).into_response())
}
