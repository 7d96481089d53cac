//! Getting a task ready before its first start: its artifacts fetched into its sandbox, its
//! image pulled. Errors say whether trying again could help: a checksum or digest mismatch,
//! an unknown image, refused credentials or an unsupported format fail the task at once
//! (nothing runs); an unreachable server is retried under the task's restart policy.

use crate::artifacts::{self, ControlSource};
use crate::image::{Image, ImageError};
use crate::launch::TaskPaths;
use crate::supervisor::Context;
use canopy_core::image::ImageReference;
use canopy_core::wire::TaskAssignment;
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug)]
pub struct PrepareError {
    pub message: String,
    pub permanent: bool,
}

impl From<artifacts::ArtifactError> for PrepareError {
    fn from(e: artifacts::ArtifactError) -> Self {
        PrepareError { permanent: e.permanent(), message: e.to_string() }
    }
}

impl From<ImageError> for PrepareError {
    fn from(e: ImageError) -> Self {
        PrepareError { permanent: e.permanent(), message: format!("image: {e}") }
    }
}

/// The marker in a sandbox naming the image its task runs (for the image store's GC).
const IMAGE_MARKER: &str = "image";

/// Fetches the task's artifacts and pulls its image; returns the image to run it in, if any.
pub async fn prepare(
    ctx: &Context,
    assignment: &TaskAssignment,
    paths: &TaskPaths,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Option<Image>, PrepareError> {
    std::fs::create_dir_all(&paths.sandbox)
        .map_err(|e| PrepareError { message: format!("sandbox {}: {e}", paths.sandbox.display()), permanent: false })?;
    if !assignment.artifacts.is_empty() {
        let token = ctx.agent_token.read().ok().and_then(|t| t.clone());
        let control = ControlSource { base_url: &ctx.control_url, agent_token: token };
        for artifact in &assignment.artifacts {
            let cached = ctx.artifacts.fetch(&ctx.fetch_http, &control, artifact, progress).await?;
            artifacts::place(&cached, artifact, &paths.sandbox).await?;
        }
    }
    let Some(reference) = &assignment.image else { return Ok(None) };
    if ctx.runtime.is_none() {
        return Err(ImageError::NoRuntime.into());
    }
    let reference = ImageReference::parse(reference).map_err(ImageError::Unsupported)?;
    let image = ctx.images.pull(&ctx.fetch_http, &reference, assignment.image_auth.as_ref(), progress).await?;
    let marker = paths.sandbox.join(IMAGE_MARKER);
    std::fs::write(&marker, &image.id)
        .map_err(|e| PrepareError { message: format!("{}: {e}", marker.display()), permanent: false })?;
    if let Err(error) = ctx.images.clean(&images_in_use(&ctx.state_dir.join("tasks"))) {
        tracing::warn!(%error, "cannot clean the image store");
    }
    Ok(Some(image))
}

/// Images of tasks that have not ended (their sandbox has the marker and no `ended` file).
fn images_in_use(tasks: &Path) -> HashSet<String> {
    let Ok(entries) = std::fs::read_dir(tasks) else { return HashSet::new() };
    entries
        .flatten()
        .filter(|e| !e.path().join("ended").exists())
        .filter_map(|e| std::fs::read_to_string(e.path().join(IMAGE_MARKER)).ok())
        .map(|id| id.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_of_ended_tasks_are_not_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (task, image, ended) in [("a", "img1", false), ("b", "img2", true)] {
            let sandbox = dir.path().join(task);
            std::fs::create_dir_all(&sandbox).expect("sandbox");
            std::fs::write(sandbox.join(IMAGE_MARKER), image).expect("marker");
            if ended {
                std::fs::write(sandbox.join("ended"), "exited").expect("ended");
            }
        }
        assert_eq!(images_in_use(dir.path()), HashSet::from(["img1".to_string()]));
    }
}
