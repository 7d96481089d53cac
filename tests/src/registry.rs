//! A real OCI registry for tests (Debian's `docker-registry`, the distribution project's
//! Registry v2 server) on a free loopback port with temporary storage and htpasswd users, and
//! tiny images built from busybox-static and pushed over the registry's own API.

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    pub storage: PathBuf,
    http: reqwest::Client,
    user: (String, String),
}

/// A blob of an image: its bytes and digest.
#[derive(Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob { media_type: media_type.into(), bytes }
    }

    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.bytes)))
    }
}

impl Registry {
    /// Starts a registry in `dir` that accepts `user` with `password` (basic auth).
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<Registry> {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("docker-registry is not installed (scripts/setup.sh installs it)")?;
        std::fs::create_dir_all(dir)?;
        let storage = dir.join("storage");
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt::hash(password, 4)?))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:0\n  secret: canopy-test\nauth:\n  htpasswd:\n    realm: canopy-test\n    path: {}\n",
                storage.display(),
                htpasswd.display()
            ),
        )?;
        let mut child = Command::new(binary)
            .args(["serve", &config.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("registry stderr")?;
        // The registry logs the address it listens on; the rest of its log goes to a file.
        let (found, address) = std::sync::mpsc::channel();
        let log = dir.join("registry.log");
        std::thread::spawn(move || {
            let mut out = std::fs::File::create(log).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ") {
                    let rest = &line[at + "listening on ".len()..];
                    let _ = found.send(rest.split(['"', ' ']).next().unwrap_or_default().to_string());
                }
                if let Some(out) = out.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(out, "{line}");
                }
            }
        });
        let address = match address.recv_timeout(Duration::from_secs(15)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the registry did not start; see {}", dir.join("registry.log").display());
            }
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Registry { child, address, storage, http, user: (user.into(), password.into()) })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/v2/{path}", self.address)
    }

    pub async fn push_blob(&self, repository: &str, blob: &Blob) -> Result<()> {
        let (user, password) = &self.user;
        let started = self
            .http
            .post(self.url(&format!("{repository}/blobs/uploads/")))
            .basic_auth(user, Some(password))
            .send()
            .await?;
        if started.status() != reqwest::StatusCode::ACCEPTED {
            bail!("starting a blob upload: {}", started.status());
        }
        let location = started.headers().get("location").and_then(|l| l.to_str().ok()).context("upload location")?;
        let location = if location.starts_with("http") {
            location.to_string()
        } else {
            format!("http://{}{location}", self.address)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = self
            .http
            .put(format!("{location}{separator}digest={}", blob.digest()))
            .basic_auth(user, Some(password))
            .header("content-type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await?;
        if done.status() != reqwest::StatusCode::CREATED {
            bail!("finishing a blob upload: {} {}", done.status(), done.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Pushes a config and layers, then an OCI manifest for them as `repository:tag`; returns
    /// the manifest's digest.
    pub async fn push_image(&self, repository: &str, tag: &str, config: &Blob, layers: &[Blob]) -> Result<String> {
        for blob in std::iter::once(config).chain(layers) {
            self.push_blob(repository, blob).await?;
        }
        let descriptor = |b: &Blob| json!({"mediaType": b.media_type, "digest": b.digest(), "size": b.bytes.len()});
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor(config),
            "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
        }))?;
        let (user, password) = &self.user;
        let pushed = self
            .http
            .put(self.url(&format!("{repository}/manifests/{tag}")))
            .basic_auth(user, Some(password))
            .header("content-type", MANIFEST)
            .body(manifest.clone())
            .send()
            .await?;
        if pushed.status() != reqwest::StatusCode::CREATED {
            bail!("pushing the manifest: {} {}", pushed.status(), pushed.text().await.unwrap_or_default());
        }
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&manifest))))
    }

    /// Where the registry keeps a blob's bytes (tests corrupt it to check digest verification).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gzip-compressed tar layer of `(path, mode, content)` files; content `None` is a
/// directory, and a path under `@link:` is a symlink to its content.
pub fn layer(entries: &[(&str, u32, Option<&[u8]>)]) -> Result<Blob> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (path, mode, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match (path.strip_prefix("@link:"), content) {
            (Some(link), Some(target)) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, link, std::str::from_utf8(target)?)?;
            }
            (_, Some(bytes)) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                header.set_cksum();
                builder.append_data(&mut header, path, *bytes)?;
            }
            (_, None) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_cksum();
                builder.append_data(&mut header, path, &[][..])?;
            }
        }
    }
    Ok(Blob::new(GZIP_LAYER, builder.into_inner()?.finish()?))
}

/// An image config blob with this command line.
pub fn config(cmd: &[&str]) -> Result<Blob> {
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin", "GREETING=from the image"], "Cmd": cmd, "WorkingDir": "/www"},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    Ok(Blob::new("application/vnd.oci.image.config.v1+json", serde_json::to_vec(&config)?))
}

/// A two-layer web server image from busybox-static: the first layer brings busybox and a
/// page that the second layer deletes (a whiteout) while adding `index.html`.
pub fn busybox_web_image() -> Result<(Blob, Vec<Blob>)> {
    let busybox = std::fs::read("/bin/busybox").context("busybox-static is not installed (scripts/setup.sh)")?;
    let base = layer(&[
        ("bin", 0o755, None),
        ("bin/busybox", 0o755, Some(&busybox)),
        ("@link:bin/sh", 0o777, Some(b"busybox")),
        ("www", 0o755, None),
        ("www/old.html", 0o644, Some(b"old")),
    ])?;
    let top =
        layer(&[("www/.wh.old.html", 0o644, Some(b"")), ("www/index.html", 0o644, Some(b"hello from an image\n"))])?;
    let config = config(&["/bin/sh", "-c", "exec /bin/busybox httpd -f -p \"$HOST:$PORT\" -h /www"])?;
    Ok((config, vec![base, top]))
}
