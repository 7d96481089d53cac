//! OCI images: pulled from a registry into a store shared by every task on the machine, and run
//! by an OCI runtime (`runtime`).
//!
//! The store (`<state>/images`) keeps blobs by digest (`blobs/`: layers and configs, shared by
//! the images that have them), each image unpacked once (`rootfs/<manifest digest>`, a task gets
//! a writable overlay on top), a record per image (`images/<id>.json`: its layers and run
//! settings) and the tags already resolved (`refs/`, per credentials). A tag other than
//! `latest` is resolved once, as Kubernetes' `IfNotPresent` does, so a warm start asks the
//! registry nothing. `clean` evicts images no live task uses, by age and then least recently
//! used down to the budget, and then every blob no remaining image has.

pub mod layer;
pub mod registry;
pub mod runtime;

use crate::artifacts::{CacheEntry, evict};
use crate::fetch;
use canopy_core::image::{ImageAuth, ImageReference};
use registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image {0}: the registry has no such manifest")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("digest mismatch: {what} has digest {actual}")]
    DigestMismatch { what: String, actual: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    #[error("registry answered {status} to {url}")]
    Registry { url: String, status: u16 },
    #[error("cannot unpack the image: {0}")]
    Unpack(String),
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no OCI runtime on this machine (install crun or runc)")]
    NoRuntime,
}

impl ImageError {
    /// Whether pulling again cannot help.
    pub fn permanent(&self) -> bool {
        match self {
            ImageError::Unreachable(_) | ImageError::Io { .. } => false,
            ImageError::Registry { status, .. } => *status < 500 && *status != 429,
            _ => true,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_path_buf(), source }
}

/// What an image says about running it (the `config` of its config blob).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    reference: String,
    /// Blob digests (hex): the config, then the layers.
    blobs: Vec<String>,
    config: RunConfig,
    /// Bytes of the compressed blobs, the measure of the store's budget.
    bytes: u64,
}

/// A pulled image, ready to run.
#[derive(Clone, Debug)]
pub struct Image {
    /// Hex digest of its manifest.
    pub id: String,
    pub rootfs: PathBuf,
    pub config: RunConfig,
}

#[derive(Clone, Debug)]
pub struct ImageStore {
    pub root: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl ImageStore {
    fn blob(&self, hex: &str) -> PathBuf {
        self.root.join("blobs").join(hex)
    }
    fn rootfs(&self, id: &str) -> PathBuf {
        self.root.join("rootfs").join(id)
    }
    fn record(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{id}.json"))
    }
    /// Where a resolved tag is remembered: per reference and per credentials, so a task
    /// reaches an image its machine already has only with credentials the registry accepted
    /// for it (a cached private image is not open to whoever names it).
    fn reference(&self, reference: &ImageReference, auth: Option<&ImageAuth>) -> PathBuf {
        let name: String = reference
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
            .collect();
        let who = auth.map_or_else(
            || "anonymous".to_string(),
            |a| hex::encode(&Sha256::digest(format!("{}:{}", a.username, a.password))[..8]),
        );
        self.root.join("refs").join(format!("{name}.{who}"))
    }

    /// An image already in the store, touched (it was just used).
    fn load(&self, id: &str) -> Option<Image> {
        let path = self.record(id);
        let record: Record = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        let rootfs = self.rootfs(id);
        if !rootfs.is_dir() {
            return None;
        }
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(Image { id: id.to_string(), rootfs, config: record.config })
    }

    /// Pulls `reference` unless the store has it, verifying every digest, and unpacks it.
    pub async fn pull(
        &self,
        http: &reqwest::Client,
        reference: &ImageReference,
        auth: Option<&ImageAuth>,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<Image, ImageError> {
        let ref_path = self.reference(reference, auth);
        let always = reference.digest.is_none() && reference.tag.as_deref() == Some("latest");
        if !always && let Some(image) = std::fs::read_to_string(&ref_path).ok().and_then(|id| self.load(id.trim())) {
            tracing::debug!(image = %reference, id = %image.id, "image from the store");
            return Ok(image);
        }
        for dir in ["blobs", "rootfs", "images", "refs"] {
            let path = self.root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        progress(format!("pulling {reference}: manifest"));
        let mut registry = Registry::new(http, reference, auth);
        let manifest = registry.manifest().await?;
        // An image is its manifest: exactly these layers, with this config.
        let id = digest_hex(&manifest.digest)?.to_string();
        let image = match self.load(&id) {
            Some(image) => image,
            None => {
                let config_hex = digest_hex(&manifest.config.digest)?.to_string();
                let config_path = self.blob(&config_hex);
                if !config_path.is_file() {
                    registry.blob(&manifest.config, &config_path, &|_, _| {}).await?;
                }
                let count = manifest.layers.len();
                let mut bytes = std::fs::metadata(&config_path).map_err(io_err(&config_path))?.len();
                let mut blobs = vec![config_hex];
                for (index, layer) in manifest.layers.iter().enumerate() {
                    let hex = digest_hex(&layer.digest)?.to_string();
                    let path = self.blob(&hex);
                    if !path.is_file() {
                        let report = |received: u64, total: Option<u64>| {
                            let total = total.unwrap_or(layer.size);
                            progress(format!(
                                "pulling {reference}: layer {}/{count}: {} of {}",
                                index + 1,
                                fetch::size(received),
                                fetch::size(total)
                            ));
                        };
                        registry.blob(layer, &path, &report).await?;
                    }
                    bytes += std::fs::metadata(&path).map_err(io_err(&path))?.len();
                    blobs.push(hex);
                }
                progress(format!("unpacking {reference}"));
                let config = read_config(&config_path)?;
                self.unpack(&id, &manifest.layers).await?;
                let record = Record { reference: reference.to_string(), blobs, config: config.clone(), bytes };
                let path = self.record(&id);
                let json = serde_json::to_vec(&record).map_err(|e| ImageError::Unpack(e.to_string()))?;
                std::fs::write(&path, json).map_err(io_err(&path))?;
                tracing::info!(image = %reference, %id, layers = count, bytes, "image pulled");
                Image { id: id.clone(), rootfs: self.rootfs(&id), config }
            }
        };
        std::fs::write(&ref_path, &id).map_err(io_err(&ref_path))?;
        Ok(image)
    }

    async fn unpack(&self, id: &str, layers: &[registry::Descriptor]) -> Result<(), ImageError> {
        let target = self.rootfs(id);
        let staging = self.root.join("rootfs").join(format!(".{id}.{}", uuid::Uuid::new_v4().simple()));
        let sources: Vec<(PathBuf, bool)> = layers
            .iter()
            .map(|l| {
                let gzip = registry::layer_compression(&l.media_type).unwrap_or(false);
                Ok((self.blob(digest_hex(&l.digest)?), gzip))
            })
            .collect::<Result<_, ImageError>>()?;
        let work = staging.clone();
        let unpacked = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&work)?;
            for (path, gzip) in sources {
                let file = std::io::BufReader::new(std::fs::File::open(&path)?);
                if gzip {
                    layer::apply_layer(flate2::read::GzDecoder::new(file), &work)?;
                } else {
                    layer::apply_layer(file, &work)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| ImageError::Unpack(e.to_string()))?;
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(ImageError::Unpack(e.to_string()));
        }
        match std::fs::rename(&staging, &target) {
            // Another task unpacked the same image meanwhile: theirs is as good.
            Err(_) if target.is_dir() => {
                let _ = std::fs::remove_dir_all(&staging);
                Ok(())
            }
            other => other.map_err(io_err(&target)),
        }
    }

    /// Evicts images none of `in_use` runs: those unused for longer than `max_age`, then the
    /// least recently used until the blobs fit in `max_bytes`; then blobs no image keeps.
    pub fn clean(&self, in_use: &HashSet<String>) -> std::io::Result<usize> {
        let Ok(records) = std::fs::read_dir(self.root.join("images")) else { return Ok(0) };
        let now = SystemTime::now();
        let (mut candidates, mut kept_bytes, mut kept) = (Vec::new(), 0u64, Vec::new());
        for entry in records {
            let entry = entry?;
            let Some(id) = entry.file_name().to_string_lossy().strip_suffix(".json").map(str::to_string) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Record>(&std::fs::read(entry.path())?) else { continue };
            if in_use.contains(&id) {
                kept_bytes += record.bytes;
                kept.push(record);
                continue;
            }
            let age = now.duration_since(entry.metadata()?.modified()?).unwrap_or_default();
            candidates.push((CacheEntry { name: id, bytes: record.bytes, age }, record));
        }
        let budget = self.max_bytes.saturating_sub(kept_bytes);
        let doomed: HashSet<String> =
            evict(candidates.iter().map(|(e, _)| e.clone()).collect(), budget, self.max_age).into_iter().collect();
        for (entry, record) in candidates {
            if !doomed.contains(&entry.name) {
                kept.push(record);
                continue;
            }
            tracing::info!(image = %record.reference, id = %entry.name, "image evicted from the store");
            std::fs::remove_file(self.record(&entry.name))?;
            let rootfs = self.rootfs(&entry.name);
            if rootfs.exists() {
                std::fs::remove_dir_all(rootfs)?;
            }
        }
        let wanted: HashSet<&String> = kept.iter().flat_map(|r| &r.blobs).collect();
        if let Ok(blobs) = std::fs::read_dir(self.root.join("blobs")) {
            for blob in blobs {
                let blob = blob?;
                let name = blob.file_name().to_string_lossy().into_owned();
                let stale_partial = fetch::is_partial(&name)
                    && now.duration_since(blob.metadata()?.modified()?).unwrap_or_default() > Duration::from_secs(3600);
                if (!fetch::is_partial(&name) && !wanted.contains(&name)) || stale_partial {
                    std::fs::remove_file(blob.path())?;
                }
            }
        }
        if let Ok(refs) = std::fs::read_dir(self.root.join("refs")) {
            for entry in refs.flatten() {
                let id = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if doomed.contains(id.trim()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(doomed.len())
    }
}

fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| canopy_core::artifact::is_sha256(hex))
        .ok_or_else(|| ImageError::Unsupported(format!("digest {digest:?} (only sha256 is supported)")))
}

fn read_config(path: &Path) -> Result<RunConfig, ImageError> {
    #[derive(Deserialize)]
    struct ConfigBlob {
        #[serde(default)]
        config: Option<RunConfig>,
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let blob: ConfigBlob = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Unsupported(format!("an image config that is not valid JSON ({e})")))?;
    Ok(blob.config.unwrap_or_default())
}
