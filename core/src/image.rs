//! OCI image references (`registry.example/team/app:1.2`, `busybox`, `app@sha256:...`), read
//! the way Docker reads them, and the credentials a spec may give for its registry.

use crate::artifact::is_sha256;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where Docker Hub's images are served from.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// `host[:port]`.
    pub registry: String,
    /// `team/app` (`library/busybox` on Docker Hub).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`: pulled by this digest, whatever the tag says.
    pub digest: Option<String>,
}

impl ImageReference {
    pub fn parse(text: &str) -> Result<ImageReference, String> {
        let fail = |why: &str| Err(format!("{text:?} is not an image reference: {why}"));
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                if !digest.strip_prefix("sha256:").is_some_and(is_sha256) {
                    return fail("the digest must be sha256:<64 lowercase hex digits>");
                }
                (name, Some(digest.to_string()))
            }
            None => (text, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(name[last_slash + i + 1..].to_string())),
            None => (name, None),
        };
        if let Some(tag) = &tag {
            let valid = (1..=128).contains(&tag.len())
                && !tag.starts_with(['.', '-'])
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return fail("a tag is 1-128 letters, digits, '_', '.' or '-'");
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => {
                (DOCKER_HUB.to_string(), if name.contains('/') { name.to_string() } else { format!("library/{name}") })
            }
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
        };
        if registry.is_empty() || !repository.split('/').all(component_ok) {
            return fail("a repository is lowercase letters, digits and separators ('.', '_', '-', '/')");
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".into()) } else { tag };
        Ok(ImageReference { registry, repository, tag, digest })
    }

    /// What to ask the registry's manifest endpoint for: the digest when there is one.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// Loopback registries are spoken to over plain HTTP (as Docker does); all others over
    /// HTTPS.
    pub fn scheme(&self) -> &'static str {
        let host = match self.registry.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => self.registry.as_str(),
        };
        let loopback = host == "localhost"
            || host == "[::1]"
            || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
        if loopback { "http" } else { "https" }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `[image_auth]`: credentials for the image's registry, used for HTTP basic auth or to get a
/// bearer token from the registry's token service. The API never shows the password back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for ImageAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageAuth").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_docker_reads_them() {
        let r = ImageReference::parse("busybox").expect("valid");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            (DOCKER_HUB, "library/busybox", "latest")
        );
        let r = ImageReference::parse("127.0.0.1:5000/team/app:1.2").expect("valid");
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.reference()), ("127.0.0.1:5000", "team/app", "1.2"));
        assert_eq!(r.scheme(), "http");
        let digest = format!("sha256:{}", "0".repeat(64));
        let r = ImageReference::parse(&format!("registry.example/app:1.2@{digest}")).expect("valid");
        assert_eq!((r.tag.as_deref(), r.reference()), (Some("1.2"), digest.as_str()));
        assert_eq!(r.scheme(), "https");
        assert_eq!(r.to_string(), format!("registry.example/app:1.2@{digest}"));
        let r = ImageReference::parse("localhost:5000/app").expect("valid");
        assert_eq!((r.registry.as_str(), r.scheme()), ("localhost:5000", "http"));
        assert_eq!(ImageReference::parse("team/app:v1").expect("valid").repository, "team/app");
    }

    #[test]
    fn invalid_references_say_why() {
        for bad in ["", "App", "app:", "app:-x", "app@sha256:abc", "registry.example/", "a//b"] {
            let error = ImageReference::parse(bad).expect_err(bad);
            assert!(error.contains("is not an image reference"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let auth = ImageAuth { username: "ci".into(), password: "hunter2".into() };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
