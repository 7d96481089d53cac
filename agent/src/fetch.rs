//! Downloads verified against a SHA-256 while they stream, for artifacts and image blobs.
//!
//! A download goes to a temporary file next to its destination and is renamed into place only
//! once its digest matches, so a file under its digest's name is always the right one and a
//! cache of such files can be shared by every task on the machine.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: checksum mismatch: expected sha256 {expected}, got {actual}")]
    Mismatch { url: String, expected: String, actual: String },
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl FetchError {
    /// Whether trying again cannot help (the file is wrong, missing or refused), as opposed to
    /// a network or server trouble that may pass.
    pub fn permanent(&self) -> bool {
        match self {
            FetchError::Mismatch { .. } => true,
            FetchError::Status { status, .. } => (400..500).contains(status) && *status != 408 && *status != 429,
            FetchError::Http { .. } | FetchError::Io { .. } => false,
        }
    }
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Streams a response into `destination` if its bytes hash to `expected` (lowercase hex).
/// `progress` hears the bytes received so far now and then, and the total when known.
pub async fn download(
    request: reqwest::RequestBuilder,
    url: &str,
    expected: &str,
    destination: &Path,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<(), FetchError> {
    let http_err = |source| FetchError::Http { url: url.to_string(), source };
    let mut response = request.send().await.map_err(http_err)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status { url: url.to_string(), status: status.as_u16() });
    }
    let total = response.content_length();
    let temporary = partial_path(destination);
    let mut file = tokio::fs::File::create(&temporary).await.map_err(io_err(&temporary))?;
    let written = async {
        let mut hasher = Sha256::new();
        let (mut received, mut reported) = (0u64, Instant::now());
        while let Some(chunk) = response.chunk().await.map_err(http_err)? {
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err(&temporary))?;
            received += chunk.len() as u64;
            if reported.elapsed() > Duration::from_millis(250) {
                progress(received, total);
                reported = Instant::now();
            }
        }
        file.flush().await.map_err(io_err(&temporary))?;
        progress(received, total);
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err(FetchError::Mismatch { url: url.to_string(), expected: expected.to_string(), actual });
        }
        tokio::fs::rename(&temporary, destination).await.map_err(io_err(destination))
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&temporary).await;
    }
    written
}

/// A name no other download uses: several tasks may fetch the same file at once.
fn partial_path(destination: &Path) -> PathBuf {
    let name = destination.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    destination.with_file_name(format!(".{name}.{}.part", uuid::Uuid::new_v4().simple()))
}

/// Whether a cache entry is an unfinished download (left out of size accounting, and removed
/// once stale).
pub fn is_partial(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".part")
}

/// Human-readable byte counts for progress lines.
pub fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}
