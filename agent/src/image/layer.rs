//! Applying an image layer (a tar stream) onto a root filesystem, whiteouts included: a
//! `.wh.NAME` entry deletes NAME from the layers below, a `.wh..wh..opq` entry hides
//! everything the layers below put in its directory.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

pub fn apply_layer<R: Read>(reader: R, rootfs: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    // What this layer put in place: an opaque directory keeps those and drops the rest.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut opaque: Vec<PathBuf> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = relative(&entry.path()?)?;
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            opaque.push(parent);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            remove_inside(rootfs, &parent.join(hidden))?;
            continue;
        }
        // A file replacing a directory of a lower layer (or the other way round) replaces it.
        let target = rootfs.join(&path);
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            let entry_is_dir = entry.header().entry_type().is_dir();
            if meta.is_dir() && !entry_is_dir {
                remove_inside(rootfs, &path)?;
            } else if !meta.is_dir() && entry_is_dir {
                std::fs::remove_file(&target)?;
            }
        }
        entry.unpack_in(rootfs)?;
        written.insert(path);
    }
    for dir in opaque {
        let Ok(children) = std::fs::read_dir(rootfs.join(&dir)) else { continue };
        for child in children {
            let child = dir.join(child?.file_name());
            if !written.iter().any(|w| w.starts_with(&child)) {
                remove_inside(rootfs, &child)?;
            }
        }
    }
    Ok(())
}

/// A layer path made relative (`./a/b` and `/a/b` are `a/b`); `..` is refused.
fn relative(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("layer entry {path:?} leaves the root"),
                ));
            }
        }
    }
    Ok(out)
}

/// Removes `path` (relative to `rootfs`) unless its parent resolves outside `rootfs` through a
/// symlink of the image's own.
fn remove_inside(rootfs: &Path, path: &Path) -> io::Result<()> {
    let target = rootfs.join(path);
    let Some(parent) = target.parent() else { return Ok(()) };
    let Ok(real_parent) = parent.canonicalize() else { return Ok(()) };
    if !real_parent.starts_with(rootfs.canonicalize()?) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("whiteout {path:?} leaves the root")));
    }
    let target = real_parent.join(target.file_name().unwrap_or_default());
    let result = match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match content {
                Some(text) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(text.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder.append_data(&mut header, path, text.as_bytes()).expect("file");
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    header.set_cksum();
                    builder.append_data(&mut header, path, &[][..]).expect("dir");
                }
            }
        }
        builder.into_inner().expect("tar")
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_what_lower_layers_put_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path();
        let base = layer(&[
            ("etc/", None),
            ("etc/keep", Some("k")),
            ("etc/gone", Some("g")),
            ("var/", None),
            ("var/old", Some("o")),
            ("bin", Some("a file that becomes a directory")),
        ]);
        apply_layer(&base[..], rootfs).expect("base");
        let top = layer(&[
            ("./etc/.wh.gone", Some("")),
            ("var/.wh..wh..opq", Some("")),
            ("var/new", Some("n")),
            ("bin/", None),
            ("bin/sh", Some("#!")),
        ]);
        apply_layer(&top[..], rootfs).expect("top");
        assert!(rootfs.join("etc/keep").is_file());
        assert!(!rootfs.join("etc/gone").exists());
        assert!(!rootfs.join("etc/.wh.gone").exists());
        assert!(!rootfs.join("var/old").exists());
        assert_eq!(std::fs::read_to_string(rootfs.join("var/new")).expect("new"), "n");
        assert!(rootfs.join("bin/sh").is_file());
    }

    #[test]
    fn entries_that_leave_the_root_are_refused() {
        assert!(relative(Path::new("../etc/passwd")).is_err());
        assert_eq!(relative(Path::new("/./a/b")).expect("relative"), PathBuf::from("a/b"));
    }
}
