//! A small typed Redfish client: the handful of resources and actions the provider uses
//! (a computer system, its reset action, its boot override, its virtual CD). Every request
//! carries HTTP Basic credentials; Redfish sessions are not used. Links are followed as the
//! BMC gives them (`@odata.id`, action `target`s) rather than built from known paths, with
//! the standard paths as fall-backs, so BMCs that lay out their tree differently work.

use canopy_providers::ProviderError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error("bmc refused the credentials for {url} (HTTP {status})")]
    Unauthorized { url: String, status: u16 },
    #[error("bmc has no {url}")]
    NotFound { url: String },
    #[error("bmc unreachable at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("bmc answered HTTP {status} to {method} {url}: {message}")]
    Status { method: &'static str, url: String, status: u16, message: String },
    #[error("bmc sent an unexpected document for {url}: {message}")]
    Decode { url: String, message: String },
    #[error("bmc {url}: {message}")]
    Unsupported { url: String, message: String },
}

impl From<RedfishError> for ProviderError {
    fn from(error: RedfishError) -> ProviderError {
        match &error {
            RedfishError::Unauthorized { .. } => ProviderError::Auth(error.to_string()),
            RedfishError::NotFound { .. } => ProviderError::NotFound(error.to_string()),
            RedfishError::Status { status: 429 | 503, .. } => {
                ProviderError::Throttled { retry_after: Duration::from_secs(5) }
            }
            RedfishError::Status { status: 400, .. } | RedfishError::Unsupported { .. } => {
                ProviderError::InvalidRequest(error.to_string())
            }
            _ => ProviderError::Other(error.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, RedfishError>;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Link {
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    /// `Paused` or anything a BMC invents.
    Other(String),
}

impl PowerState {
    fn parse(text: &str) -> PowerState {
        match text {
            "On" => PowerState::On,
            "Off" => PowerState::Off,
            "PoweringOn" => PowerState::PoweringOn,
            "PoweringOff" => PowerState::PoweringOff,
            other => PowerState::Other(other.to_string()),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    pub health: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Boot {
    pub boot_source_override_target: Option<String>,
    pub boot_source_override_enabled: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ResetAction {
    pub target: Option<String>,
    #[serde(rename = "ResetType@Redfish.AllowableValues", default)]
    pub allowed: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SystemActions {
    #[serde(rename = "#ComputerSystem.Reset")]
    pub reset: Option<ResetAction>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SystemLinks {
    #[serde(default)]
    pub managed_by: Vec<Link>,
}

/// The parts of a `ComputerSystem` the provider reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct System {
    #[serde(rename = "@odata.id", default)]
    pub odata_id: String,
    pub id: String,
    #[serde(default)]
    power_state: Option<String>,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub boot: Boot,
    pub virtual_media: Option<Link>,
    #[serde(default)]
    pub links: SystemLinks,
    #[serde(default)]
    pub actions: SystemActions,
}

impl System {
    pub fn power(&self) -> PowerState {
        self.power_state.as_deref().map(PowerState::parse).unwrap_or(PowerState::Other(String::new()))
    }

    pub fn is_critical(&self) -> bool {
        self.status.health.as_deref() == Some("Critical")
    }

    /// Whether the BMC lists this reset type (a BMC that lists none is assumed to take any).
    pub fn allows_reset(&self, reset_type: &str) -> bool {
        self.actions.reset.as_ref().is_none_or(|r| r.allowed.is_empty() || r.allowed.iter().any(|a| a == reset_type))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct MediaAction {
    pub target: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct MediaActions {
    #[serde(rename = "#VirtualMedia.InsertMedia")]
    pub insert: Option<MediaAction>,
    #[serde(rename = "#VirtualMedia.EjectMedia")]
    pub eject: Option<MediaAction>,
}

/// The parts of a `VirtualMedia` device the provider reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualMedia {
    #[serde(rename = "@odata.id")]
    pub odata_id: String,
    #[serde(default)]
    pub media_types: Vec<String>,
    pub image: Option<String>,
    pub inserted: Option<bool>,
    #[serde(default)]
    pub actions: MediaActions,
}

impl VirtualMedia {
    pub fn holds(&self, image: &str) -> bool {
        self.inserted == Some(true) && self.image.as_deref() == Some(image)
    }

    pub fn is_empty(&self) -> bool {
        self.inserted != Some(true) && self.image.as_deref().is_none_or(str::is_empty)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Collection {
    #[serde(default)]
    members: Vec<Link>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Manager {
    virtual_media: Option<Link>,
}

/// One BMC, reached with one set of credentials.
#[derive(Clone)]
pub struct Bmc {
    http: reqwest::Client,
    base_url: String,
    username: String,
    password: String,
}

impl fmt::Debug for Bmc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bmc")
            .field("base_url", &self.base_url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Bmc {
    pub fn new(http: reqwest::Client, base_url: &str, username: &str, password: &str) -> Bmc {
        Bmc {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            username: username.to_string(),
            password: password.to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{}", self.base_url, path)
        }
    }

    async fn send(&self, method: &'static str, path: &str, body: Option<serde_json::Value>) -> Result<String> {
        let url = self.url(path);
        let mut request = match method {
            "GET" => self.http.get(&url),
            "PATCH" => self.http.patch(&url),
            _ => self.http.post(&url),
        };
        request = request.basic_auth(&self.username, Some(&self.password)).header("Accept", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| RedfishError::Unreachable { url: url.clone(), message: error_chain(&e) })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| RedfishError::Unreachable { url: url.clone(), message: error_chain(&e) })?;
        match status {
            200..=299 => Ok(text),
            401 | 403 => Err(RedfishError::Unauthorized { url, status }),
            404 => Err(RedfishError::NotFound { url }),
            _ => Err(RedfishError::Status { method, url, status, message: redfish_message(&text) }),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let text = self.send("GET", path, None).await?;
        serde_json::from_str(&text).map_err(|e| RedfishError::Decode { url: self.url(path), message: e.to_string() })
    }

    pub async fn system(&self, system_id: &str) -> Result<System> {
        self.get(&format!("/redfish/v1/Systems/{system_id}")).await
    }

    /// `ComputerSystem.Reset` with this `ResetType`, at the target the BMC advertises.
    pub async fn reset(&self, system: &System, reset_type: &str) -> Result<()> {
        let target = system
            .actions
            .reset
            .as_ref()
            .and_then(|r| r.target.clone())
            .unwrap_or_else(|| format!("{}/Actions/ComputerSystem.Reset", system_path(system)));
        self.send("POST", &target, Some(serde_json::json!({ "ResetType": reset_type }))).await.map(drop)
    }

    pub async fn set_boot_override(&self, system: &System, target: &str, enabled: &str) -> Result<()> {
        let body = serde_json::json!({
            "Boot": { "BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled }
        });
        self.send("PATCH", &system_path(system), Some(body)).await.map(drop)
    }

    /// The system's virtual CD/DVD drive: under the system (newer BMCs) or under the first
    /// manager that manages it (older ones).
    pub async fn virtual_cd(&self, system: &System) -> Result<VirtualMedia> {
        let collection = match &system.virtual_media {
            Some(link) => link.odata_id.clone(),
            None => {
                let manager = system.links.managed_by.first().ok_or_else(|| RedfishError::Unsupported {
                    url: self.url(&system_path(system)),
                    message: "system has no virtual media and no manager".into(),
                })?;
                let manager: Manager = self.get(&manager.odata_id).await?;
                manager
                    .virtual_media
                    .ok_or_else(|| RedfishError::Unsupported {
                        url: self.url(&system_path(system)),
                        message: "the system's manager has no virtual media".into(),
                    })?
                    .odata_id
            }
        };
        let members: Collection = self.get(&collection).await?;
        for member in members.members {
            let media: VirtualMedia = self.get(&member.odata_id).await?;
            if media.media_types.iter().any(|t| t == "CD" || t == "DVD") {
                return Ok(media);
            }
        }
        Err(RedfishError::Unsupported { url: self.url(&collection), message: "no virtual CD or DVD drive".into() })
    }

    pub async fn insert_media(&self, media: &VirtualMedia, image: &str) -> Result<()> {
        let target = media
            .actions
            .insert
            .as_ref()
            .and_then(|a| a.target.clone())
            .unwrap_or_else(|| format!("{}/Actions/VirtualMedia.InsertMedia", media.odata_id));
        let body = serde_json::json!({ "Image": image, "Inserted": true, "WriteProtected": true });
        self.send("POST", &target, Some(body)).await.map(drop)
    }

    pub async fn eject_media(&self, media: &VirtualMedia) -> Result<()> {
        let target = media
            .actions
            .eject
            .as_ref()
            .and_then(|a| a.target.clone())
            .unwrap_or_else(|| format!("{}/Actions/VirtualMedia.EjectMedia", media.odata_id));
        self.send("POST", &target, Some(serde_json::json!({}))).await.map(drop)
    }
}

fn system_path(system: &System) -> String {
    if system.odata_id.is_empty() { format!("/redfish/v1/Systems/{}", system.id) } else { system.odata_id.clone() }
}

/// The message of a Redfish error document, or the start of whatever the BMC sent.
fn redfish_message(text: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let message = parsed.as_ref().and_then(|v| {
        let error = v.get("error")?;
        let extended = error
            .get("@Message.ExtendedInfo")
            .and_then(|i| i.get(0))
            .and_then(|i| i.get("Message"))
            .and_then(|m| m.as_str());
        extended.or_else(|| error.get("message").and_then(|m| m.as_str())).map(str::to_string)
    });
    message.unwrap_or_else(|| text.trim().chars().take(200).collect())
}

/// A reqwest error with its causes (its Display alone says only "error sending request").
fn error_chain(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_provider_kinds() {
        let auth = RedfishError::Unauthorized { url: "u".into(), status: 401 };
        assert!(matches!(ProviderError::from(auth), ProviderError::Auth(_)));
        assert!(matches!(ProviderError::from(RedfishError::NotFound { url: "u".into() }), ProviderError::NotFound(_)));
        let down = RedfishError::Unreachable { url: "u".into(), message: "refused".into() };
        assert!(matches!(ProviderError::from(down), ProviderError::Other(_)));
    }

    #[test]
    fn redfish_error_documents_give_their_message() {
        let text = r#"{"error": {"code": "Base.1.0.GeneralError", "message": "Not found",
            "@Message.ExtendedInfo": [{"Message": "System x not found"}]}}"#;
        assert_eq!(redfish_message(text), "System x not found");
        assert_eq!(redfish_message("plain text"), "plain text");
    }

    #[test]
    fn bmc_debug_output_never_shows_the_password() {
        let bmc = Bmc::new(reqwest::Client::new(), "http://127.0.0.1:1/", "admin", "hunter2");
        let shown = format!("{bmc:?}");
        assert!(!shown.contains("hunter2") && shown.contains("admin"), "{shown}");
    }
}
