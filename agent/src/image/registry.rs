//! A small client of the OCI distribution API (Registry v2): manifests (an image index is
//! resolved to this machine's platform), blobs verified against their digests, and both
//! authentication schemes registries use: HTTP basic, and bearer tokens from the token service
//! a `WWW-Authenticate: Bearer realm=...` challenge names.

use super::ImageError;
use crate::fetch::{self, FetchError};
use canopy_core::image::{ImageAuth, ImageReference};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Layer media types this agent unpacks, and whether they are gzip-compressed.
pub fn layer_compression(media_type: &str) -> Option<bool> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => Some(false),
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Some(true)
        }
        _ => None,
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// An image manifest for this machine's platform.
#[derive(Debug)]
pub struct Manifest {
    /// `sha256:...` of the manifest itself.
    pub digest: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The OCI name of this machine's architecture.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub struct Registry<'a> {
    http: &'a reqwest::Client,
    image: &'a ImageReference,
    auth: Option<&'a ImageAuth>,
    /// `Authorization` value that worked (or the first to try).
    authorization: Option<String>,
}

impl<'a> Registry<'a> {
    pub fn new(http: &'a reqwest::Client, image: &'a ImageReference, auth: Option<&'a ImageAuth>) -> Registry<'a> {
        Registry { http, image, auth, authorization: None }
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}://{}/v2/{}/{kind}/{reference}", self.image.scheme(), self.image.registry, self.image.repository)
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(url);
        match &self.authorization {
            Some(value) => request.header(reqwest::header::AUTHORIZATION, value),
            None => request,
        }
    }

    /// GET with authentication: on a 401 challenge, answers it once (basic, or a token from
    /// the realm) and retries.
    async fn get(&mut self, url: &str, accept: &str) -> Result<reqwest::Response, ImageError> {
        let unreachable = |e: reqwest::Error| ImageError::Unreachable(format!("{url}: {e}"));
        let response = self.request(url).header(reqwest::header::ACCEPT, accept).send().await.map_err(unreachable)?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED || self.authorization.is_some() {
            return self.checked(response, url);
        }
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.authorization = Some(self.answer(&challenge).await?);
        let response = self.request(url).header(reqwest::header::ACCEPT, accept).send().await.map_err(unreachable)?;
        self.checked(response, url)
    }

    fn checked(&self, response: reqwest::Response, url: &str) -> Result<reqwest::Response, ImageError> {
        match response.status().as_u16() {
            200..=299 => Ok(response),
            401 | 403 => Err(ImageError::Unauthorized(format!(
                "registry {} refused {} ({}): {}",
                self.image.registry,
                if self.auth.is_some() { "the credentials in image_auth" } else { "access without credentials" },
                response.status(),
                self.image.repository
            ))),
            404 => Err(ImageError::NotFound(self.image.to_string())),
            status => Err(ImageError::Registry { url: url.to_string(), status }),
        }
    }

    async fn answer(&self, challenge: &str) -> Result<String, ImageError> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let auth = self.auth.ok_or_else(|| {
                ImageError::Unauthorized(format!("registry {} needs credentials (image_auth)", self.image.registry))
            })?;
            use base64::Engine as _;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", auth.username, auth.password));
            return Ok(format!("Basic {encoded}"));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ImageError::Unsupported(format!("registry authentication scheme {scheme:?}")));
        }
        let params = challenge_params(params);
        let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.clone()).ok_or_else(|| {
            ImageError::Unsupported(format!("a bearer challenge without a realm from {}", self.image.registry))
        })?;
        let query: Vec<(String, String)> = params.into_iter().filter(|(k, _)| k == "service" || k == "scope").collect();
        let mut request = self.http.get(&realm).query(&query);
        if let Some(auth) = self.auth {
            request = request.basic_auth(&auth.username, Some(&auth.password));
        }
        let response =
            request.send().await.map_err(|e| ImageError::Unreachable(format!("token service {realm}: {e}")))?;
        if !response.status().is_success() {
            return Err(ImageError::Unauthorized(format!(
                "the token service of registry {} refused {} ({})",
                self.image.registry,
                if self.auth.is_some() { "the credentials in image_auth" } else { "an anonymous token" },
                response.status()
            )));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token =
            response.json().await.map_err(|e| ImageError::Unreachable(format!("token service {realm}: {e}")))?;
        token
            .token
            .or(token.access_token)
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| ImageError::Unauthorized(format!("the token service {realm} returned no token")))
    }

    /// The manifest for this machine's platform, resolving an image index, each document
    /// checked against its digest when it was asked for by one.
    pub async fn manifest(&mut self) -> Result<Manifest, ImageError> {
        let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
        let mut reference = self.image.reference().to_string();
        for _ in 0..2 {
            let url = self.url("manifests", &reference);
            let response = self.get(&url, &accept).await?;
            let header_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
            let body = response.bytes().await.map_err(|e| ImageError::Unreachable(format!("{url}: {e}")))?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
            if reference.starts_with("sha256:") && digest != reference {
                return Err(ImageError::DigestMismatch { what: format!("manifest {reference}"), actual: digest });
            }
            let document: Document = serde_json::from_slice(&body)
                .map_err(|e| ImageError::Unsupported(format!("a manifest that is not valid JSON ({e})")))?;
            let media_type = document.media_type.clone().or(header_type).unwrap_or_default();
            match media_type.as_str() {
                OCI_INDEX | DOCKER_LIST => {
                    let wanted = architecture();
                    let chosen = document
                        .manifests
                        .iter()
                        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == wanted))
                        .ok_or_else(|| {
                            ImageError::Unsupported(format!("{}: no linux/{wanted} image in its index", self.image))
                        })?;
                    reference = chosen.digest.clone();
                }
                OCI_MANIFEST | DOCKER_MANIFEST => {
                    let config = document.config.ok_or_else(|| {
                        ImageError::Unsupported(format!("{}: a manifest without a config", self.image))
                    })?;
                    for layer in &document.layers {
                        if layer_compression(&layer.media_type).is_none() {
                            return Err(ImageError::Unsupported(format!(
                                "layer {} has media type {:?}; this agent unpacks tar and tar+gzip layers only",
                                layer.digest, layer.media_type
                            )));
                        }
                    }
                    return Ok(Manifest { digest, config, layers: document.layers });
                }
                other => {
                    return Err(ImageError::Unsupported(format!(
                        "manifest media type {other:?} (supported: OCI image manifest and index, Docker manifest v2 and list)"
                    )));
                }
            }
        }
        Err(ImageError::Unsupported(format!("{}: an image index that points at another index", self.image)))
    }

    /// Downloads a blob into `destination`, verified against its digest.
    pub async fn blob(
        &mut self,
        descriptor: &Descriptor,
        destination: &Path,
        progress: &(dyn Fn(u64, Option<u64>) + Sync),
    ) -> Result<(), ImageError> {
        let expected = descriptor.digest.strip_prefix("sha256:").ok_or_else(|| {
            ImageError::Unsupported(format!("blob digest {:?} (only sha256 is supported)", descriptor.digest))
        })?;
        let url = self.url("blobs", &descriptor.digest);
        // The manifest request (always first) answered any authentication challenge.
        match fetch::download(self.request(&url), &url, expected, destination, progress).await {
            Ok(()) => Ok(()),
            Err(FetchError::Mismatch { actual, .. }) => Err(ImageError::DigestMismatch {
                what: format!("blob {}", descriptor.digest),
                actual: format!("sha256:{actual}"),
            }),
            Err(FetchError::Status { status: 404, .. }) => {
                Err(ImageError::NotFound(format!("{} (blob {})", self.image, descriptor.digest)))
            }
            Err(FetchError::Status { status: 401 | 403, .. }) => Err(ImageError::Unauthorized(format!(
                "registry {} refused blob {}",
                self.image.registry, descriptor.digest
            ))),
            Err(e) => Err(ImageError::Unreachable(e.to_string())),
        }
    }
}

/// `realm="https://auth",service="registry",scope="repository:a:pull"` as pairs.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, next)) => (value, next),
                None => (quoted, ""),
            },
            None => after.split_once(',').map_or((after, ""), |(v, n)| (v, n)),
        };
        params.push((key, value.to_string()));
        rest = next.trim_start().trim_start_matches(',');
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read_with_quoted_commas() {
        let params = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            params,
            vec![
                ("realm".to_string(), "https://auth.example/token".to_string()),
                ("service".to_string(), "registry.example".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
    }

    #[test]
    fn only_tar_layers_are_unpacked() {
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar+gzip"), Some(true));
        assert_eq!(layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"), Some(true));
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar"), Some(false));
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"), None);
    }
}
