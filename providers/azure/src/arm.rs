//! A small typed client for Azure Resource Manager: a bearer token from the official
//! `azure_identity` client-secret credential, `api-version` on every call, `nextLink` paging,
//! and ARM's error envelope classified into provider-neutral kinds.

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use canopy_providers::ProviderError;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Retry-After when a 429 carries none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the client needs to reach ARM and Entra ID.
pub(crate) struct ArmSettings<'a> {
    pub tenant_id: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub authority_host: &'a str,
    pub management_url: &'a str,
    pub token_scope: &'a str,
}

pub(crate) struct ArmClient {
    http: reqwest::Client,
    credential: Arc<ClientSecretCredential>,
    management_url: String,
    token_scope: String,
}

/// A successful ARM response: what the long-running-operation flow and the callers read.
pub(crate) struct ArmResponse {
    pub status: StatusCode,
    pub async_operation: Option<String>,
    pub body: Vec<u8>,
}

impl ArmResponse {
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ProviderError::Other(format!("{what}: unexpected response: {e}")))
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ArmErrorBody,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct ArmErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

/// The one HTTP client of the provider: ARM, the token endpoint (as the credential's transport)
/// and the Retail Prices API all go through it, so all trust the same roots.
pub(crate) fn http_client(extra_root_certificate_pem: Option<&str>) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
    if let Some(pem) = extra_root_certificate_pem {
        let certificate = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| ProviderError::InvalidRequest(format!("extra root certificate: {e}")))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|e| ProviderError::Other(format!("http client: {e}")))
}

impl ArmClient {
    pub fn new(settings: &ArmSettings<'_>, http: reqwest::Client) -> Result<ArmClient, ProviderError> {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = settings.authority_host.trim_end_matches('/').to_string();
        let options = ClientSecretCredentialOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(Arc::new(http.clone()))),
                cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
                ..ClientOptions::default()
            },
        };
        let credential = ClientSecretCredential::new(
            settings.tenant_id,
            settings.client_id.to_string(),
            Secret::new(settings.client_secret.to_string()),
            Some(options),
        )
        .map_err(|e| ProviderError::Auth(format!("client secret credential: {e}")))?;
        Ok(ArmClient {
            http,
            credential,
            management_url: settings.management_url.trim_end_matches('/').to_string(),
            token_scope: settings.token_scope.to_string(),
        })
    }

    /// An absolute ARM URL for `path` (which starts with `/subscriptions/`) and `api-version`.
    pub fn url(&self, path: &str, api_version: &str) -> String {
        format!("{}{path}?api-version={api_version}", self.management_url)
    }

    async fn bearer(&self) -> Result<String, ProviderError> {
        let token = self
            .credential
            .get_token(&[self.token_scope.as_str()], None)
            .await
            .map_err(|e| ProviderError::Auth(format!("token request failed: {e}")))?;
        Ok(format!("Bearer {}", token.token.secret()))
    }

    /// Sends one ARM request; non-2xx answers become provider errors.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<ArmResponse, ProviderError> {
        let mut request = self.http.request(method.clone(), url).header("Authorization", self.bearer().await?);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| ProviderError::Other(format!("{method} {url}: {e}")))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| ProviderError::Other(format!("{method} {url}: {e}")))?;
        let request_id = headers.get("x-ms-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
        tracing::debug!(%method, %url, status = status.as_u16(), request_id, "arm call");
        if status.is_success() {
            let async_operation = headers.get("azure-asyncoperation").and_then(|v| v.to_str().ok()).map(str::to_string);
            return Ok(ArmResponse { status, async_operation, body: bytes.to_vec() });
        }
        let error = serde_json::from_slice::<ErrorEnvelope>(&bytes).map(|e| e.error).unwrap_or_else(|_| ArmErrorBody {
            code: status.as_str().to_string(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
        });
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        tracing::info!(%method, %url, status = status.as_u16(), code = %error.code, request_id, "arm call refused");
        Err(classify(status, &error, retry_after))
    }

    pub async fn get<T: DeserializeOwned>(&self, url: &str, what: &str) -> Result<T, ProviderError> {
        self.send(Method::GET, url, None).await?.json(what)
    }

    /// Every item of a `{value, nextLink}` list, following the links.
    pub async fn list<T: DeserializeOwned>(&self, first_url: String, what: &str) -> Result<Vec<T>, ProviderError> {
        let mut items = Vec::new();
        let mut next = Some(first_url);
        while let Some(url) = next {
            let page: Page<T> = self.get(&url, what).await?;
            items.extend(page.value);
            next = page.next_link.filter(|link| !link.is_empty());
        }
        Ok(items)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Maps an ARM error (a refused call, or a failed long-running operation) to the kinds the
/// provisioning controller acts on. Capacity errors carry no instance type here: the caller
/// that knows the request fills it in.
pub(crate) fn classify(status: StatusCode, error: &ArmErrorBody, retry_after: Option<Duration>) -> ProviderError {
    let message =
        if error.message.is_empty() { error.code.clone() } else { format!("{}: {}", error.code, error.message) };
    match error.code.as_str() {
        "AllocationFailed"
        | "ZonalAllocationFailed"
        | "SkuNotAvailable"
        | "OverconstrainedAllocationRequest"
        | "OverconstrainedZonalAllocationRequest"
        | "AllocationFailedVmSizeNotAvailable" => {
            return ProviderError::InsufficientCapacity { instance_type: String::new(), zone: String::new(), message };
        }
        "QuotaExceeded" => return ProviderError::QuotaExceeded(message),
        "OperationNotAllowed" if error.message.to_ascii_lowercase().contains("quota") => {
            return ProviderError::QuotaExceeded(message);
        }
        _ => {}
    }
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Auth(message),
        StatusCode::NOT_FOUND => ProviderError::NotFound(message),
        StatusCode::TOO_MANY_REQUESTS => {
            ProviderError::Throttled { retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER) }
        }
        StatusCode::BAD_REQUEST => ProviderError::InvalidRequest(message),
        _ => ProviderError::Other(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> ArmErrorBody {
        ArmErrorBody { code: code.into(), message: message.into() }
    }

    #[test]
    fn arm_errors_map_to_kinds_the_controller_acts_on() {
        let quota = body("OperationNotAllowed", "results in exceeding approved standardDSv3Family Cores quota");
        assert!(matches!(classify(StatusCode::CONFLICT, &quota, None), ProviderError::QuotaExceeded(_)));
        let other = body("OperationNotAllowed", "simulate eviction is only for spot");
        assert!(matches!(classify(StatusCode::CONFLICT, &other, None), ProviderError::Other(_)));
        for code in ["AllocationFailed", "ZonalAllocationFailed", "SkuNotAvailable"] {
            let error = classify(StatusCode::CONFLICT, &body(code, "no capacity"), None);
            assert!(matches!(error, ProviderError::InsufficientCapacity { .. }), "{code}: {error:?}");
        }
        let throttled =
            classify(StatusCode::TOO_MANY_REQUESTS, &body("TooManyRequests", ""), Some(Duration::from_secs(7)));
        assert_eq!(throttled, ProviderError::Throttled { retry_after: Duration::from_secs(7) });
        let expired = body("ExpiredAuthenticationToken", "expired");
        assert!(matches!(classify(StatusCode::UNAUTHORIZED, &expired, None), ProviderError::Auth(_)));
        let missing = body("ResourceNotFound", "gone");
        assert!(matches!(classify(StatusCode::NOT_FOUND, &missing, None), ProviderError::NotFound(_)));
    }
}
