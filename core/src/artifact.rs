//! Artifacts: files a task needs that its machine does not have, fetched by the agent into the
//! task's sandbox before the task starts (`[[artifacts]]` in a spec).
//!
//! Each one names where it comes from (an `http(s)` URL, or `canopy:<sha256>` for a file
//! uploaded to the control service by `canopy deploy`), the SHA-256 its bytes must have, where
//! in the sandbox it goes, and whether to unpack it. The checksum is not optional: it is what
//! makes the agent's cache safe to share between tasks and what stops a changed file from
//! running.

use crate::spec::SpecError;
use serde::{Deserialize, Serialize};

/// The URL scheme of artifacts stored by the control service: `canopy:<sha256 hex>`.
pub const UPLOADED_SCHEME: &str = "canopy:";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSpec {
    /// `http://...`, `https://...`, or `canopy:<sha256>` (uploaded by `canopy deploy`).
    pub url: String,
    /// Lowercase hex SHA-256 of the file as fetched (before extraction).
    pub sha256: String,
    /// Relative to the sandbox: the file's path, or the directory an archive is unpacked
    /// into. Default: the URL's last path segment, or the sandbox itself for an archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<ArchiveKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchiveKind {
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "zip")]
    Zip,
}

impl ArtifactSpec {
    /// The digest of a file uploaded to the control service, if this is one.
    pub fn uploaded(&self) -> Option<&str> {
        self.url.strip_prefix(UPLOADED_SCHEME)
    }

    /// Where the artifact goes, relative to the sandbox (`"."` is the sandbox itself).
    pub fn destination(&self) -> String {
        if let Some(destination) = &self.destination {
            return destination.clone();
        }
        if self.extract.is_some() {
            return ".".into();
        }
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        path.rsplit('/').next().unwrap_or_default().to_string()
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), SpecError> {
        let err = |name: &str, message: String| SpecError { field: format!("{field}.{name}"), message };
        if !is_sha256(&self.sha256) {
            return Err(err("sha256", "must be 64 lowercase hex digits (the file's SHA-256)".into()));
        }
        match self.uploaded() {
            Some(digest) if digest != self.sha256 => {
                return Err(err("url", format!("an uploaded artifact's url must be canopy:{}", self.sha256)));
            }
            Some(_) => {}
            None => {
                let rest = self.url.strip_prefix("https://").or_else(|| self.url.strip_prefix("http://"));
                if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
                    return Err(err(
                        "url",
                        format!("{:?} must be an http(s) URL (or a local file, which canopy deploy uploads)", self.url),
                    ));
                }
            }
        }
        let destination = self.destination();
        if destination.is_empty() || (destination == "." && self.extract.is_none()) {
            return Err(err("destination", "needed: the url does not end in a file name".into()));
        }
        if destination.starts_with('/') || destination.split('/').any(|part| part == "..") {
            return Err(err("destination", format!("{destination:?} must be relative and stay inside the sandbox")));
        }
        Ok(())
    }
}

pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(url: &str) -> ArtifactSpec {
        ArtifactSpec { url: url.into(), sha256: "a".repeat(64), destination: None, extract: None }
    }

    #[test]
    fn the_destination_defaults_to_the_file_name_or_the_sandbox_for_archives() {
        assert_eq!(artifact("https://example.com/a/tool.bin?x=1").destination(), "tool.bin");
        let archive = ArtifactSpec { extract: Some(ArchiveKind::TarGz), ..artifact("https://example.com/a.tgz") };
        assert_eq!(archive.destination(), ".");
    }

    #[test]
    fn bad_artifacts_name_the_field() {
        let bad = |a: ArtifactSpec| a.validate("artifacts[0]").expect_err("invalid").to_string();
        assert!(bad(artifact("ftp://example.com/x")).starts_with("artifacts[0].url:"));
        assert!(bad(artifact("https://")).starts_with("artifacts[0].url:"));
        assert!(bad(ArtifactSpec { sha256: "A".repeat(64), ..artifact("https://e.com/x") }).contains(".sha256:"));
        assert!(bad(artifact("https://example.com/dir/")).starts_with("artifacts[0].destination:"));
        let escape = ArtifactSpec { destination: Some("../etc/x".into()), ..artifact("https://e.com/x") };
        assert!(bad(escape).contains("inside the sandbox"));
        let absolute = ArtifactSpec { destination: Some("/etc/x".into()), ..artifact("https://e.com/x") };
        assert!(bad(absolute).starts_with("artifacts[0].destination:"));
        let wrong_digest = artifact(&format!("canopy:{}", "b".repeat(64)));
        assert!(bad(wrong_digest).starts_with("artifacts[0].url:"));
    }

    #[test]
    fn uploaded_artifacts_carry_their_digest() {
        let uploaded =
            ArtifactSpec { destination: Some("app.bin".into()), ..artifact(&format!("canopy:{}", "a".repeat(64))) };
        assert_eq!(uploaded.validate("artifacts[0]"), Ok(()));
        assert_eq!(uploaded.uploaded(), Some("a".repeat(64).as_str()));
        let parsed: ArtifactSpec = serde_json::from_str(&format!(
            r#"{{"url":"https://e.com/x.zip","sha256":"{}","extract":"tar.gz"}}"#,
            "a".repeat(64)
        ))
        .expect("parse");
        assert_eq!(parsed.extract, Some(ArchiveKind::TarGz));
    }
}
