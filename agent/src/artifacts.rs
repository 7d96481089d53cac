//! Artifacts: fetched into a task's sandbox before it starts, verified, and cached by digest.
//!
//! The cache (`<state>/cache/artifacts/<sha256>`) is shared by every task on the machine: a
//! second task that needs the same file copies it from there without downloading. Each use
//! touches the file, and `clean` evicts by age and then least recently used first, down to the
//! size budget. A task gets its own copy (or unpacked tree), so evicting never disturbs one.

use crate::fetch::{self, FetchError, io_err};
use canopy_core::artifact::{ArchiveKind, ArtifactSpec};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact {0}")]
    Fetch(#[from] FetchError),
    #[error("artifact {url}: cannot unpack it as {kind}: {message}")]
    Extract { url: String, kind: &'static str, message: String },
    #[error("artifact {url}: the agent has not joined yet, so it cannot fetch uploaded files")]
    NotJoined { url: String },
}

impl ArtifactError {
    pub fn permanent(&self) -> bool {
        match self {
            ArtifactError::Fetch(e) => e.permanent(),
            ArtifactError::Extract { .. } => true,
            ArtifactError::NotJoined { .. } => false,
        }
    }
}

/// How to reach the control service for uploaded artifacts (`canopy:<sha256>`).
pub struct ControlSource<'a> {
    pub base_url: &'a str,
    pub agent_token: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ArtifactCache {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl ArtifactCache {
    /// The cached file for `artifact`, downloaded and verified first unless already there.
    pub async fn fetch(
        &self,
        http: &reqwest::Client,
        control: &ControlSource<'_>,
        artifact: &ArtifactSpec,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<PathBuf, ArtifactError> {
        let cached = self.dir.join(&artifact.sha256);
        if cached.is_file() {
            // Touch: `clean` evicts the least recently used first.
            if let Ok(file) = std::fs::File::options().write(true).open(&cached) {
                let _ = file.set_modified(SystemTime::now());
            }
            tracing::debug!(sha256 = %artifact.sha256, "artifact from the cache");
            return Ok(cached);
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir)).map_err(ArtifactError::Fetch)?;
        let (url, request) = match artifact.uploaded() {
            Some(digest) => {
                let url = format!("{}/v1/agent/artifacts/{digest}", control.base_url.trim_end_matches('/'));
                let token =
                    control.agent_token.as_deref().ok_or_else(|| ArtifactError::NotJoined { url: url.clone() })?;
                (url.clone(), http.get(&url).bearer_auth(token))
            }
            None => (artifact.url.clone(), http.get(&artifact.url)),
        };
        let name = artifact.destination();
        let report = |received: u64, total: Option<u64>| {
            let of = total.map(|t| format!(" of {}", fetch::size(t))).unwrap_or_default();
            progress(format!("fetching artifact {name}: {}{of}", fetch::size(received)));
        };
        fetch::download(request, &url, &artifact.sha256, &cached, &report).await?;
        tracing::info!(sha256 = %artifact.sha256, %url, "artifact downloaded");
        if let Err(error) = self.clean() {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot clean the artifact cache");
        }
        Ok(cached)
    }

    /// Evicts entries older than `max_age`, then the least recently used until the cache fits
    /// in `max_bytes`. Returns how many files went.
    pub fn clean(&self) -> std::io::Result<usize> {
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let age = now.duration_since(meta.modified()?).unwrap_or_default();
            let name = entry.file_name().to_string_lossy().into_owned();
            // A download in progress is left alone unless it was abandoned long ago.
            if fetch::is_partial(&name) && age < Duration::from_secs(3600) {
                continue;
            }
            entries.push(CacheEntry { name, bytes: meta.len(), age });
        }
        let doomed = evict(entries, self.max_bytes, self.max_age);
        for name in &doomed {
            std::fs::remove_file(self.dir.join(name))?;
        }
        if !doomed.is_empty() {
            tracing::info!(evicted = doomed.len(), "artifact cache cleaned");
        }
        Ok(doomed.len())
    }
}

#[derive(Clone)]
pub struct CacheEntry {
    pub name: String,
    pub bytes: u64,
    /// Since last use.
    pub age: Duration,
}

/// Which entries go: everything older than `max_age`, then the least recently used until the
/// rest fit in `max_bytes`.
pub fn evict(mut entries: Vec<CacheEntry>, max_bytes: u64, max_age: Duration) -> Vec<String> {
    entries.sort_by_key(|e| std::cmp::Reverse(e.age));
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut doomed = Vec::new();
    for entry in entries {
        if entry.age > max_age || total > max_bytes {
            total -= entry.bytes;
            doomed.push(entry.name);
        }
    }
    doomed
}

/// Puts a cached artifact into the sandbox: a copy of the file, or the archive unpacked.
pub async fn place(cached: &Path, artifact: &ArtifactSpec, sandbox: &Path) -> Result<(), ArtifactError> {
    let (cached, artifact, sandbox) = (cached.to_path_buf(), artifact.clone(), sandbox.to_path_buf());
    let url = artifact.url.clone();
    tokio::task::spawn_blocking(move || place_blocking(&cached, &artifact, &sandbox))
        .await
        .unwrap_or_else(|e| Err(ArtifactError::Extract { url, kind: "file", message: e.to_string() }))
}

fn place_blocking(cached: &Path, artifact: &ArtifactSpec, sandbox: &Path) -> Result<(), ArtifactError> {
    // Validated specs keep the destination inside the sandbox (relative, no `..`).
    let destination = sandbox.join(artifact.destination());
    let Some(kind) = artifact.extract else {
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::copy(cached, &destination).map_err(io_err(&destination))?;
        return Ok(());
    };
    std::fs::create_dir_all(&destination).map_err(io_err(&destination))?;
    let file = std::fs::File::open(cached).map_err(io_err(cached))?;
    let extract_err = |kind: &'static str| {
        let url = artifact.url.clone();
        move |e: std::io::Error| ArtifactError::Extract { url, kind, message: e.to_string() }
    };
    match kind {
        ArchiveKind::Tar => unpack_tar(tar::Archive::new(file), &destination).map_err(extract_err("tar")),
        ArchiveKind::TarGz => unpack_tar(tar::Archive::new(flate2::read::GzDecoder::new(file)), &destination)
            .map_err(extract_err("tar.gz")),
        ArchiveKind::Zip => zip::ZipArchive::new(file)
            .and_then(|mut archive| archive.extract(&destination))
            .map_err(|e| ArtifactError::Extract { url: artifact.url.clone(), kind: "zip", message: e.to_string() }),
    }
}

fn unpack_tar<R: std::io::Read>(mut archive: tar::Archive<R>, destination: &Path) -> std::io::Result<()> {
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    // `unpack` refuses entries that would land outside `destination` (`..`, symlinked parents).
    archive.unpack(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, bytes: u64, age_s: u64) -> CacheEntry {
        CacheEntry { name: name.into(), bytes, age: Duration::from_secs(age_s) }
    }

    #[test]
    fn eviction_drops_the_expired_then_the_least_recently_used_down_to_the_budget() {
        let entries = vec![entry("new", 40, 1), entry("old", 10, 1000), entry("mid", 40, 50), entry("older", 40, 100)];
        // "old" is expired; then 120 bytes remain for a budget of 80: "older" goes.
        assert_eq!(evict(entries, 80, Duration::from_secs(500)), vec!["old", "older"]);
        assert!(evict(vec![entry("a", 10, 1)], 10, Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn archives_unpack_into_the_destination_and_files_are_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive_path = dir.path().join("a.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&archive_path).expect("create"),
                Default::default(),
            );
            let mut builder = tar::Builder::new(gz);
            let mut header = tar::Header::new_gnu();
            header.set_size(3);
            header.set_mode(0o755);
            header.set_cksum();
            builder.append_data(&mut header, "bin/tool", &b"hi\n"[..]).expect("append");
            builder.into_inner().expect("tar").finish().expect("gzip");
        }
        let sandbox = dir.path().join("sandbox");
        let spec = |extract, destination: Option<&str>| ArtifactSpec {
            url: "https://example.com/a.tar.gz".into(),
            sha256: "0".repeat(64),
            destination: destination.map(Into::into),
            extract,
        };
        place_blocking(&archive_path, &spec(Some(ArchiveKind::TarGz), Some("app")), &sandbox).expect("unpack");
        assert_eq!(std::fs::read(sandbox.join("app/bin/tool")).expect("unpacked"), b"hi\n");
        place_blocking(&archive_path, &spec(None, None), &sandbox).expect("copy");
        assert!(sandbox.join("a.tar.gz").is_file());
        let error =
            place_blocking(&archive_path, &spec(Some(ArchiveKind::Zip), None), &sandbox).expect_err("not a zip");
        assert!(error.to_string().contains("cannot unpack it as zip"), "{error}");
        assert!(error.permanent());
    }
}
