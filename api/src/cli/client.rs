//! The CLI's HTTP client: where the control service is and which token to present.
//!
//! Resolution order: flags, then `CANOPY_API_URL` / `CANOPY_TOKEN`, then the config file
//! (`$CANOPY_CONFIG`, default `~/.config/canopy/config.toml`), which `make demo` writes.

use anyhow::{Context, Result, anyhow, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    pub api_url: Option<String>,
    pub token: Option<String>,
}

impl CliConfig {
    pub fn default_path() -> PathBuf {
        if let Some(path) = std::env::var_os("CANOPY_CONFIG") {
            return PathBuf::from(path);
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        home.join(".config/canopy/config.toml")
    }

    pub fn load(path: &std::path::Path) -> Result<CliConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the config readable by its owner only: it holds a token.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string(self)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        Ok(())
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Sent as `?team=` on every request, for admins acting on one team's apps.
    team: Option<String>,
}

impl Client {
    pub fn new(api_url: String, token: String, team: Option<String>) -> Result<Client> {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
        Ok(Client { http, base: api_url.trim_end_matches('/').to_string(), token, team })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn get_text(&self, path: &str, query: &[(&str, String)]) -> Result<String> {
        let response = self.with_team(self.http.get(self.url(path))).bearer_auth(&self.token).query(query).send().await;
        let response = check(response.with_context(|| format!("cannot reach {}", self.base))?).await?;
        Ok(response.text().await?)
    }

    /// A GET whose answer is read as it arrives (`canopy logs -f`): no total timeout, only one
    /// for connecting.
    pub async fn get_stream(&self, path: &str, query: &[(&str, String)]) -> Result<reqwest::Response> {
        let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(30)).build()?;
        let response = self.with_team(http.get(self.url(path))).bearer_auth(&self.token).query(query).send().await;
        check(response.with_context(|| format!("cannot reach {}", self.base))?).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    /// A GET that answers `None` for 404.
    pub async fn get_optional<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let response = self.with_team(self.http.get(self.url(path))).bearer_auth(&self.token).send().await;
        let response = response.with_context(|| format!("cannot reach the control service at {}", self.base))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(check(response).await?.json().await?))
    }

    /// Uploads a file as the body of a PUT: no total timeout, only one for connecting.
    pub async fn put_file<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T> {
        let http = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(30)).build()?;
        self.send(http.put(self.url(path)).header(reqwest::header::CONTENT_TYPE, "application/octet-stream").body(body))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        let response = self.with_team(self.http.delete(self.url(path))).bearer_auth(&self.token).send().await;
        check(response.with_context(|| format!("cannot reach {}", self.base))?).await?;
        Ok(())
    }

    fn with_team(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.team {
            Some(team) => request.query(&[("team", team)]),
            None => request,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let response = self.with_team(request).bearer_auth(&self.token).send().await;
        let response =
            check(response.with_context(|| format!("cannot reach the control service at {}", self.base))?).await?;
        Ok(response.json().await?)
    }
}

/// Turns the API's error shape into a readable error.
async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    bail!("{} ({status})", message)
}

pub fn require(value: Option<String>, what: &str) -> Result<String> {
    value.ok_or_else(|| {
        anyhow!(
            "no {what}: pass --{what}, set CANOPY_{}, or run `make demo` which writes the config",
            what.to_uppercase().replace('-', "_")
        )
    })
}
