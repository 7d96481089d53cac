//! The entry point: one stable URL per app, `http://<entry>/<team>/<app>/<path>`, whatever
//! machines its instances run on. Each request goes to one of the app's healthy instances, in
//! turn; an instance that cannot be reached is skipped for the next one. Public, like an
//! ingress: the app decides what it serves. Requests and responses are buffered (this is a
//! simple built-in balancer, not a streaming proxy), up to `MAX_BODY`.

use crate::auth::Scope;
use crate::store::{Endpoint, Store};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Largest request or response body forwarded.
const MAX_BODY: usize = 32 << 20;
/// How long an app's endpoints are remembered (a new or lost instance shows within this).
const FRESH: Duration = Duration::from_secs(1);

/// Per (team, app): when its endpoints were read, and what they were.
type EndpointCache = HashMap<(String, String), (Instant, Arc<Vec<Endpoint>>)>;

pub struct Entry {
    store: Store,
    http: reqwest::Client,
    next: AtomicUsize,
    endpoints: tokio::sync::Mutex<EndpointCache>,
}

impl Entry {
    pub fn new(store: Store) -> Result<Entry, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Entry { store, http, next: AtomicUsize::new(0), endpoints: Default::default() })
    }

    async fn endpoints(&self, team: &str, app: &str) -> Result<Arc<Vec<Endpoint>>, Response> {
        let key = (team.to_string(), app.to_string());
        if let Some((read, endpoints)) = self.endpoints.lock().await.get(&key)
            && read.elapsed() < FRESH
        {
            return Ok(endpoints.clone());
        }
        let failed = |e: crate::store::StoreError| {
            tracing::warn!(error = %e, "entry point: cannot read endpoints");
            (StatusCode::SERVICE_UNAVAILABLE, "canopy: the control service's database is unavailable\n").into_response()
        };
        let Some(team_id) = self.store.team_id(team).await.map_err(failed)? else {
            return Err((StatusCode::NOT_FOUND, format!("canopy: no team {team:?}\n")).into_response());
        };
        let endpoints = Arc::new(self.store.endpoints(Scope::Team(team_id), app, None).await.map_err(failed)?);
        self.endpoints.lock().await.insert(key, (Instant::now(), endpoints.clone()));
        Ok(endpoints)
    }
}

pub fn router(entry: Arc<Entry>) -> Router {
    Router::new()
        .route("/{team}/{app}", any(root))
        .route("/{team}/{app}/", any(root))
        .route("/{team}/{app}/{*rest}", any(forward))
        .with_state(entry)
}

async fn root(
    State(entry): State<Arc<Entry>>,
    Path((team, app)): Path<(String, String)>,
    request: Request,
) -> Response {
    proxy(&entry, &team, &app, "", request).await
}

async fn forward(
    State(entry): State<Arc<Entry>>,
    Path((team, app, rest)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    proxy(&entry, &team, &app, &rest, request).await
}

async fn proxy(entry: &Entry, team: &str, app: &str, rest: &str, request: Request) -> Response {
    let endpoints = match entry.endpoints(team, app).await {
        Ok(endpoints) => endpoints,
        Err(response) => return response,
    };
    if endpoints.is_empty() {
        let message = format!("canopy: app {app:?} of team {team:?} has no healthy instance (or does not exist)\n");
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], message).into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "canopy: request body too large\n").into_response(),
    };
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let first = entry.next.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..endpoints.len() {
        let endpoint = &endpoints[(first + attempt) % endpoints.len()];
        let url = format!("http://{}:{}/{rest}{query}", endpoint.address, endpoint.port);
        let sent = entry
            .http
            .request(parts.method.clone(), &url)
            .headers(forwarded_headers(&parts.headers))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                let headers = forwarded_headers(response.headers());
                return match response.bytes().await {
                    Ok(bytes) if bytes.len() <= MAX_BODY => {
                        let mut reply = Response::new(Body::from(bytes));
                        *reply.status_mut() = status;
                        *reply.headers_mut() = headers;
                        reply
                    }
                    Ok(_) => (StatusCode::BAD_GATEWAY, "canopy: response body too large\n").into_response(),
                    Err(error) => {
                        tracing::warn!(%app, %url, %error, "entry point: reading the response failed");
                        (StatusCode::BAD_GATEWAY, "canopy: the instance's response broke off\n").into_response()
                    }
                };
            }
            // Not reachable (stopping, moving): the next instance gets the request. A request
            // that reached an instance is never sent twice.
            Err(error) if error.is_connect() => {
                tracing::debug!(%app, %url, %error, "entry point: instance unreachable, trying the next");
            }
            Err(error) => {
                tracing::warn!(%app, %url, %error, "entry point: request failed");
                return (StatusCode::BAD_GATEWAY, "canopy: the instance did not answer\n").into_response();
            }
        }
    }
    (StatusCode::BAD_GATEWAY, format!("canopy: no instance of {app:?} could be reached\n")).into_response()
}

/// The end-to-end headers (RFC 9110 7.6.1: hop-by-hop ones are the proxy's own business).
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    const HOP_BY_HOP: [HeaderName; 7] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    let mut out = headers.clone();
    for name in HOP_BY_HOP.iter().chain([&header::HOST, &header::CONTENT_LENGTH, &header::TRAILER]) {
        out.remove(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close".parse().expect("value"));
        headers.insert(header::HOST, "entry".parse().expect("value"));
        headers.insert(header::ACCEPT, "text/plain".parse().expect("value"));
        headers.insert("x-request-id", "abc".parse().expect("value"));
        let out = forwarded_headers(&headers);
        assert!(out.get(header::CONNECTION).is_none());
        assert!(out.get(header::HOST).is_none());
        assert_eq!(out.get(header::ACCEPT).map(|v| v.as_bytes()), Some(&b"text/plain"[..]));
        assert_eq!(out.get("x-request-id").map(|v| v.as_bytes()), Some(&b"abc"[..]));
    }
}
