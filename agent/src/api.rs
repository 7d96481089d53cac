//! The agent's own small HTTP API, called only by the control service: task logs.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde::Deserialize;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

#[derive(Clone)]
pub struct ApiState {
    pub state_dir: PathBuf,
    /// The key the control service presents; unset until the agent has joined.
    pub control_key: Arc<RwLock<Option<String>>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/v1/tasks/{id}/logs", get(logs)).with_state(state)
}

#[derive(Deserialize)]
struct LogQuery {
    stream: String,
    tail: u64,
}

async fn logs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(q): Query<LogQuery>,
) -> Result<String, (StatusCode, String)> {
    let expected = state.control_key.read().map(|key| key.clone()).unwrap_or(None);
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match (expected, presented) {
        (Some(expected), Some(presented)) if expected == presented => {}
        _ => return Err((StatusCode::UNAUTHORIZED, "bad control key".into())),
    }
    if q.stream != "stdout" && q.stream != "stderr" {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "stream: must be stdout or stderr".into()));
    }
    let path = state.state_dir.join("tasks").join(id.to_string()).join(format!("{}.log", q.stream));
    tokio::task::spawn_blocking(move || tail(&path, q.tail))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, format!("task {id} has no {} log here", q.stream)),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })
}

/// The last `bytes` of a file, as text.
fn tail(path: &std::path::Path, bytes: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(bytes)))?;
    let mut buffer = Vec::new();
    file.take(bytes).read_to_end(&mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}
