//! The agent's own small HTTP API, called only by the control service: task logs.
//!
//! `GET /v1/tasks/{id}/logs?stream=stdout|stderr&tail=BYTES` answers the last bytes of a log
//! (reaching into its rotated copies). With `follow=true` the answer is streamed: the tail
//! (or, with `offset=N`, the live file from byte N), then whatever the task appends, across
//! its restarts and log rotations, until the task ends for good or the caller hangs up.

use crate::launch::TaskPaths;
use crate::logs::{self, Follower};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use uuid::Uuid;

/// How often a follower looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// The largest chunk a follower sends at once.
const FOLLOW_CHUNK: u64 = 64 << 10;

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
    #[serde(default = "default_tail")]
    tail: u64,
    #[serde(default)]
    follow: bool,
    /// With `follow`: start at this byte of the live file instead of the tail.
    offset: Option<u64>,
}

fn default_tail() -> u64 {
    64 << 10
}

type ApiError = (StatusCode, String);

async fn logs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let expected = state.control_key.read().map(|key| key.clone()).unwrap_or(None);
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match (expected, presented) {
        (Some(expected), Some(presented)) if expected == presented => {}
        _ => return Err((StatusCode::UNAUTHORIZED, "bad control key".into())),
    }
    if q.stream != "stdout" && q.stream != "stderr" {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "stream: must be stdout or stderr".into()));
    }
    if q.offset.is_some() && !q.follow {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "offset: only with follow=true".into()));
    }
    // Only the sandbox matters here; the cgroup path is not used.
    let paths = TaskPaths::new(&state.state_dir, std::path::Path::new("/"), &id);
    let path = paths.log(&q.stream);
    let io_error = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, format!("task {id} has no {} log here", q.stream)),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", path.display())),
    };
    let (tail, end) = match q.offset {
        // The file must exist, as for a tail; the offset may be past its end (it was rotated).
        Some(offset) => std::fs::metadata(&path).map(|_| (Vec::new(), offset)).map_err(io_error)?,
        None => {
            let (path, bytes) = (path.clone(), q.tail);
            tokio::task::spawn_blocking(move || logs::tail(&path, bytes))
                .await
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(io_error)?
        }
    };
    if !q.follow {
        return Ok(String::from_utf8_lossy(&tail).into_owned().into_response());
    }
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(follow(Follower::new(&path, end), paths.ended(), tail, sender));
    let mut response = Body::from_stream(Chunks(receiver)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Sends `first`, then what the task appends, until the task has ended and everything it
/// wrote was sent, or the receiver is gone.
async fn follow(
    mut follower: Follower,
    ended: PathBuf,
    first: Vec<u8>,
    sender: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    if !first.is_empty() && sender.send(Ok(Bytes::from(first))).await.is_err() {
        return;
    }
    loop {
        // Looked at before reading: a task that has ended writes nothing more, so once this
        // read comes back empty everything has been sent.
        let has_ended = ended.exists();
        match follower.read_new(FOLLOW_CHUNK) {
            Ok(bytes) if !bytes.is_empty() => {
                if sender.send(Ok(Bytes::from(bytes))).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(_) if has_ended => return,
            Ok(_) => {}
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
        }
        if sender.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// The follower's chunks as the stream a response body is made from.
struct Chunks(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl futures_core::Stream for Chunks {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_core::quantity::Bytes as Size;
    use canopy_core::spec::LogsSpec;
    use std::io::Write;

    async fn serve(state_dir: &std::path::Path) -> String {
        let control_key = Arc::new(RwLock::new(Some("key".to_string())));
        let state = ApiState { state_dir: state_dir.to_path_buf(), control_key };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        format!("http://{address}")
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut file = std::fs::File::options().create(true).append(true).open(path).expect("open");
        file.write_all(text.as_bytes()).expect("write");
    }

    /// Reads chunks until the body holds `wanted`, for at most 5 s.
    async fn read_until(response: &mut reqwest::Response, body: &mut String, wanted: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !body.contains(wanted) {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => body.push_str(&String::from_utf8_lossy(&chunk)),
                other => panic!("waiting for {wanted:?} in {body:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn follow_streams_the_tail_then_appends_across_rotation_and_ends_with_the_task() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let paths = TaskPaths::new(dir.path(), std::path::Path::new("/"), &id);
        std::fs::create_dir_all(&paths.sandbox).expect("sandbox");
        let log = paths.log("stdout");
        append(&log, "first\nsecond\n");
        let base = serve(dir.path()).await;
        let http = reqwest::Client::new();
        let url = format!("{base}/v1/tasks/{id}/logs");

        let unauthorized = http.get(&url).query(&[("stream", "stdout")]).send().await.expect("send");
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
        let tail = http.get(&url).bearer_auth("key").query(&[("stream", "stdout"), ("tail", "7")]).send().await;
        assert_eq!(tail.expect("send").text().await.expect("text"), "second\n", "the non-follow path is unchanged");
        let missing = http.get(format!("{base}/v1/tasks/{}/logs", Uuid::new_v4())).bearer_auth("key");
        let missing = missing.query(&[("stream", "stdout"), ("follow", "true")]).send().await.expect("send");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);

        let query = [("stream", "stdout"), ("tail", "7"), ("follow", "true")];
        let mut response = http.get(&url).bearer_auth("key").query(&query).send().await.expect("send");
        assert!(response.status().is_success());
        let mut body = String::new();
        read_until(&mut response, &mut body, "second\n").await;
        append(&log, "third\n");
        read_until(&mut response, &mut body, "third\n").await;
        append(&log, "fourth\n");
        logs::rotate_if_needed(&log, &LogsSpec { max_size: Size(4), max_files: 1 }).expect("rotate");
        append(&log, "fifth\n");
        read_until(&mut response, &mut body, "fifth\n").await;
        assert_eq!(body, "second\nthird\nfourth\nfifth\n", "nothing lost or repeated across the rotation");

        append(&log, "last words\n");
        std::fs::write(paths.ended(), "exited\n").expect("mark ended");
        read_until(&mut response, &mut body, "last words\n").await;
        let end = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await.expect("the stream ends");
        assert!(matches!(end, Ok(None)), "clean end of the stream: {end:?}");
    }

    #[tokio::test]
    async fn follow_from_an_offset_starts_there_and_an_ended_task_stream_ends_once_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let paths = TaskPaths::new(dir.path(), std::path::Path::new("/"), &id);
        std::fs::create_dir_all(&paths.sandbox).expect("sandbox");
        append(&paths.log("stderr"), "0123456789");
        std::fs::write(paths.ended(), "failed\n").expect("mark ended");
        let base = serve(dir.path()).await;
        let response = reqwest::Client::new()
            .get(format!("{base}/v1/tasks/{id}/logs"))
            .bearer_auth("key")
            .query(&[("stream", "stderr"), ("follow", "true"), ("offset", "6")])
            .send()
            .await
            .expect("send");
        assert_eq!(response.text().await.expect("text"), "6789");
    }
}
