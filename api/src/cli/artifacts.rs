//! `canopy deploy` with local files as artifacts: each is uploaded to the control service
//! (content-addressed, so an unchanged file is not sent again) and the spec refers to it as
//! `canopy:<sha256>`, so a developer needs no file server of their own.

use super::client::Client;
use crate::store::ArtifactRow;
use anyhow::{Context, Result, bail};
use canopy_core::artifact::UPLOADED_SCHEME;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The spec text with every `[[artifacts]]` whose `url` is a local path (relative to the
/// spec's directory) uploaded and replaced by its `canopy:<sha256>`; unchanged otherwise.
pub async fn upload_local(client: &Client, spec_path: &Path, text: &str, json: bool) -> Result<String> {
    let mut document: toml::Table = match text.parse() {
        Ok(document) => document,
        // Not TOML: the spec parser says what is wrong.
        Err(_) => return Ok(text.to_string()),
    };
    let Some(toml::Value::Array(artifacts)) = document.get_mut("artifacts") else { return Ok(text.to_string()) };
    let mut uploaded = 0;
    for (index, artifact) in artifacts.iter_mut().enumerate() {
        let Some(table) = artifact.as_table_mut() else { continue };
        let Some(url) = table.get("url").and_then(|u| u.as_str()).map(str::to_string) else { continue };
        if url.starts_with("http://") || url.starts_with("https://") || url.starts_with(UPLOADED_SCHEME) {
            continue;
        }
        let path = spec_path.parent().unwrap_or(Path::new(".")).join(&url);
        let bytes =
            std::fs::read(&path).with_context(|| format!("artifacts[{index}].url: reading {}", path.display()))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = table.get("sha256").and_then(|s| s.as_str())
            && expected != sha256
        {
            bail!("artifacts[{index}].sha256: {} has sha256 {sha256}, not {expected}", path.display());
        }
        let api_path = format!("/v1/artifacts/{sha256}");
        if client.get_optional::<ArtifactRow>(&api_path).await?.is_none() {
            let size = bytes.len();
            let _: ArtifactRow = client.put_file(&api_path, bytes).await?;
            uploaded += 1;
            if !json {
                println!("uploaded {} ({size} bytes, sha256 {sha256})", path.display());
            }
        }
        if !table.contains_key("destination") && !table.contains_key("extract") {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            table.insert("destination".into(), toml::Value::String(name));
        }
        table.insert("url".into(), toml::Value::String(format!("{UPLOADED_SCHEME}{sha256}")));
        table.insert("sha256".into(), toml::Value::String(sha256));
    }
    tracing::debug!(uploaded, "local artifacts uploaded");
    Ok(toml::to_string(&document)?)
}
