//! A small typed client for the parts of Keystone v3 and Nova 2.1 the provider uses: token
//! issue (password or application credential, project scope), the compute endpoint from the
//! token's catalog, and JSON requests with one pinned microversion. It re-authenticates once
//! when a token is refused or about to expire, and classifies errors into provider-neutral
//! kinds. Secrets never reach a log line or a `Debug` output.

use canopy_providers::ProviderError;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

/// The compute microversion every request pins: 2.37 made `networks` required ("auto"), 2.47
/// embeds the flavor (with its name) in a server. Nova has supported it since Pike (2017).
pub const MICROVERSION: (u32, u32) = (2, 47);

/// How a token is obtained.
#[derive(Clone)]
pub enum Credentials {
    /// A user's password, scoped to a project; user and project are looked up by name in
    /// their domains (`Default` on most clouds).
    Password { username: String, user_domain: String, password: String, project: String, project_domain: String },
    /// An application credential (the project is the one it was created in).
    ApplicationCredential { id: String, secret: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { username, user_domain, project, project_domain, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("user_domain", user_domain)
                .field("password", &"<redacted>")
                .field("project", project)
                .field("project_domain", project_domain)
                .finish(),
            Credentials::ApplicationCredential { id, .. } => {
                f.debug_struct("ApplicationCredential").field("id", id).field("secret", &"<redacted>").finish()
            }
        }
    }
}

impl Credentials {
    fn auth_body(&self) -> Value {
        match self {
            Credentials::Password { username, user_domain, password, project, project_domain } => json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": username, "domain": {"name": user_domain}, "password": password}}},
                "scope": {"project": {"name": project, "domain": {"name": project_domain}}},
            }}),
            Credentials::ApplicationCredential { id, secret } => json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": id, "secret": secret},
            }}}),
        }
    }
}

struct Session {
    token: String,
    expires_at: Option<SystemTime>,
    compute: String,
}

pub struct Client {
    http: reqwest::Client,
    auth_url: String,
    credentials: Credentials,
    region: String,
    compute_override: Option<String>,
    session: Mutex<Option<Session>>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: Token,
}

#[derive(Deserialize)]
struct Token {
    expires_at: Option<String>,
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
}

#[derive(Deserialize)]
struct CatalogEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    interface: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    region_id: Option<String>,
    url: String,
}

impl Client {
    pub fn new(
        auth_url: &str,
        credentials: Credentials,
        region: &str,
        compute_override: Option<String>,
    ) -> Result<Client, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProviderError::Other(format!("http client: {e}")))?;
        let trimmed = auth_url.trim_end_matches('/');
        let auth_url = if trimmed.ends_with("/v3") { trimmed.to_string() } else { format!("{trimmed}/v3") };
        Ok(Client {
            http,
            auth_url,
            credentials,
            region: region.to_string(),
            compute_override: compute_override.map(|u| u.trim_end_matches('/').to_string()),
            session: Mutex::new(None),
        })
    }

    /// Issues a project-scoped token and finds the compute endpoint in its catalog.
    #[tracing::instrument(skip_all, fields(auth_url = %self.auth_url, region = %self.region))]
    async fn authenticate(&self) -> Result<Session, ProviderError> {
        let response = self
            .http
            .post(format!("{}/auth/tokens", self.auth_url))
            .json(&self.credentials.auth_body())
            .send()
            .await
            .map_err(|e| transport("keystone", e))?;
        let status = response.status();
        let token = response.headers().get("X-Subject-Token").and_then(|v| v.to_str().ok()).map(str::to_string);
        let headers = response.headers().clone();
        let body = response.text().await.map_err(|e| transport("keystone", e))?;
        if !status.is_success() {
            return Err(classify(status, &headers, &body, "keystone"));
        }
        let token = token.ok_or_else(|| ProviderError::Auth("keystone issued no X-Subject-Token".into()))?;
        let parsed: TokenBody =
            serde_json::from_str(&body).map_err(|e| ProviderError::Other(format!("keystone token body: {e}")))?;
        let expires_at = parsed.token.expires_at.as_deref().and_then(parse_rfc3339);
        let compute = match &self.compute_override {
            Some(url) => url.clone(),
            None => self.compute_endpoint(&parsed.token.catalog)?,
        };
        tracing::info!(compute = %compute, "authenticated");
        Ok(Session { token, expires_at, compute })
    }

    fn compute_endpoint(&self, catalog: &[CatalogEntry]) -> Result<String, ProviderError> {
        catalog
            .iter()
            .filter(|entry| entry.kind == "compute")
            .flat_map(|entry| &entry.endpoints)
            .find(|e| {
                e.interface == "public"
                    && (e.region.as_deref() == Some(&self.region) || e.region_id.as_deref() == Some(&self.region))
            })
            .map(|e| e.url.trim_end_matches('/').to_string())
            .ok_or_else(|| {
                ProviderError::InvalidRequest(format!(
                    "no public compute endpoint for region {} in the token's catalog",
                    self.region
                ))
            })
    }

    /// The token and compute endpoint, authenticating when there is none or it expires soon.
    async fn session(&self, renew: bool) -> Result<(String, String), ProviderError> {
        let mut session = self.session.lock().await;
        let fresh = session
            .as_ref()
            .is_some_and(|s| s.expires_at.is_none_or(|at| at > SystemTime::now() + Duration::from_secs(300)));
        if renew || !fresh {
            *session = Some(self.authenticate().await?);
        }
        let s = session.as_ref().ok_or_else(|| ProviderError::Other("no session".into()))?;
        Ok((s.token.clone(), s.compute.clone()))
    }

    /// Checks the credentials and that the compute API speaks our microversion.
    pub async fn connect(&self) -> Result<(), ProviderError> {
        let (_, compute) = self.session(false).await?;
        let response = self.http.get(&compute).send().await.map_err(|e| transport("nova", e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(|e| transport("nova", e))?;
        if !status.is_success() {
            return Err(classify(status, &headers, &body, "nova version discovery"));
        }
        let max = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/version/version").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        match parse_version(&max) {
            Some(max) if max >= MICROVERSION => Ok(()),
            _ => Err(ProviderError::InvalidRequest(format!(
                "nova at {compute} supports microversions up to {max:?}; canopy needs {}.{}",
                MICROVERSION.0, MICROVERSION.1
            ))),
        }
    }

    /// One Nova request: the JSON body on success (`Value::Null` when empty), a classified
    /// error otherwise. A refused token is renewed once.
    pub async fn nova(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let mut renew = false;
        loop {
            let (token, compute) = self.session(renew).await?;
            let mut request = self
                .http
                .request(method.clone(), format!("{compute}{path}"))
                .header("X-Auth-Token", token)
                .header("OpenStack-API-Version", format!("compute {}.{}", MICROVERSION.0, MICROVERSION.1))
                .header("X-OpenStack-Nova-API-Version", format!("{}.{}", MICROVERSION.0, MICROVERSION.1));
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| transport("nova", e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !renew {
                tracing::info!(path, "token refused; authenticating again");
                renew = true;
                continue;
            }
            let headers = response.headers().clone();
            let text = response.text().await.map_err(|e| transport("nova", e))?;
            if !status.is_success() {
                tracing::debug!(path, status = status.as_u16(), "nova error");
                return Err(classify(status, &headers, &text, path));
            }
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| ProviderError::Other(format!("nova {path}: body: {e}")));
        }
    }
}

fn transport(service: &str, error: reqwest::Error) -> ProviderError {
    if error.is_timeout() || error.is_connect() {
        // The service may be restarting or overloaded: worth retrying later.
        tracing::warn!(service, error = %error, "transport error");
        return ProviderError::Throttled { retry_after: Duration::from_secs(5) };
    }
    ProviderError::Other(format!("{service}: {error}"))
}

/// The message in an OpenStack error body: Nova's `{"<kind>": {"code", "message"}}` and
/// Keystone's `{"error": {"code", "title", "message"}}` alike.
fn error_message(body: &str) -> String {
    serde_json::from_str::<BTreeMap<String, Value>>(body)
        .ok()
        .and_then(|map| map.values().find_map(|v| v.get("message").and_then(Value::as_str).map(str::to_string)))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// Maps an HTTP error to the kinds the provisioning controller acts on.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &str, what: &str) -> ProviderError {
    let message = format!("{what}: {}", error_message(body));
    match status.as_u16() {
        401 => ProviderError::Auth(message),
        403 if message.contains("Quota exceeded") => ProviderError::QuotaExceeded(message),
        403 => ProviderError::Auth(message),
        404 => ProviderError::NotFound(message),
        413 | 429 | 503 => {
            let seconds = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(5);
            ProviderError::Throttled { retry_after: Duration::from_secs(seconds) }
        }
        400 | 405 | 406 | 409 => ProviderError::InvalidRequest(message),
        _ => ProviderError::Other(format!("{message} (HTTP {})", status.as_u16())),
    }
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `2026-11-22T06:22:01.254671Z` (Keystone's format) to a time; `None` if it does not parse,
/// in which case the token is renewed only when refused.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim_end_matches('Z');
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split(['+', '.']).next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(seconds).ok().map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystone_expiry_parses() {
        let at = parse_rfc3339("2026-11-22T06:22:01.254671Z").expect("parses");
        assert_eq!(at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).ok(), Some(1_795_328_521));
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn errors_are_classified() {
        let quota = r#"{"forbidden": {"code": 403, "message": "Quota exceeded for instances: Requested 1"}}"#;
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, &HeaderMap::new(), quota, "x"),
            ProviderError::QuotaExceeded(_)
        ));
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &headers, "", "x"),
            ProviderError::Throttled { retry_after: Duration::from_secs(7) }
        );
        let missing = r#"{"itemNotFound": {"code": 404, "message": "Instance x could not be found."}}"#;
        assert_eq!(
            classify(StatusCode::NOT_FOUND, &HeaderMap::new(), missing, "get"),
            ProviderError::NotFound("get: Instance x could not be found.".into())
        );
        let denied = r#"{"error": {"code": 401, "title": "Unauthorized", "message": "requires authentication"}}"#;
        assert!(matches!(classify(StatusCode::UNAUTHORIZED, &HeaderMap::new(), denied, "k"), ProviderError::Auth(_)));
    }
}
