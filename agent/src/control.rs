//! The agent's side of the agent protocol: join once, then heartbeat.

use canopy_core::wire::{HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control service unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("control service refused {what}: {status}: {message}")]
    Refused { what: &'static str, status: u16, message: String },
    #[error("credentials file {path}: {source}")]
    Credentials { path: PathBuf, source: std::io::Error },
}

/// What the agent keeps after joining: its identity and credentials.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credentials {
    pub control_url: String,
    #[serde(flatten)]
    pub join: JoinResponse,
}

impl Credentials {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("agent.json")
    }

    pub fn load(state_dir: &Path) -> Result<Option<Credentials>, ControlError> {
        let path = Credentials::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ControlError::Credentials { path, source: std::io::Error::other(e) }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ControlError::Credentials { path, source }),
        }
    }

    /// Written owner-readable only: it holds the agent's token.
    pub fn save(&self, state_dir: &Path) -> Result<(), ControlError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = Credentials::path(state_dir);
        let err = |source| ControlError::Credentials { path: path.clone(), source };
        let bytes = serde_json::to_vec(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).map_err(err)?;
        std::io::Write::write_all(&mut file, &bytes).map_err(err)
    }
}

#[derive(Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    base: String,
}

impl ControlClient {
    pub fn new(http: reqwest::Client, base: &str) -> ControlClient {
        ControlClient { http, base: base.trim_end_matches('/').to_string() }
    }

    pub async fn join(&self, request: &JoinRequest) -> Result<JoinResponse, ControlError> {
        let response = self.http.post(format!("{}/v1/agent/join", self.base)).json(request).send().await?;
        Ok(check(response, "join").await?.json().await?)
    }

    pub async fn heartbeat(&self, token: &str, request: &HeartbeatRequest) -> Result<HeartbeatResponse, ControlError> {
        let response =
            self.http.post(format!("{}/v1/agent/heartbeat", self.base)).bearer_auth(token).json(request).send().await?;
        Ok(check(response, "heartbeat").await?.json().await?)
    }
}

async fn check(response: reqwest::Response, what: &'static str) -> Result<reqwest::Response, ControlError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let message = response.text().await.unwrap_or_default();
    Err(ControlError::Refused { what, status: status.as_u16(), message })
}
