//! Running an image task with an OCI runtime (crun, else runc), detected at agent start.
//!
//! Each task gets a bundle in its sandbox: a writable overlay (`upper/`) over the image's
//! shared, read-only unpacked root (`rootfs/`), and a generated `config.json`. The runtime runs
//! in the foreground as the task's process (so supervision, logs and re-adoption are those of
//! process tasks); the container stays in the task's own cgroup, whose limits the agent has
//! already written (crun runs with cgroup management off, runc is given it as cgroupsPath). The container shares the machine's network, as tasks do, so the ports
//! the agent allocated work unchanged; it gets its own pid, mount, ipc and uts namespaces.

use super::{Image, ImageError, RunConfig};
use crate::launch::TaskPaths;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Where a task's sandbox appears inside its container.
pub const SANDBOX_IN_CONTAINER: &str = "/sandbox";

#[derive(Clone, Debug)]
pub struct OciRuntime {
    pub binary: PathBuf,
    /// The runtime's state directory (`--root`), under the agent's state dir.
    pub state: PathBuf,
}

impl OciRuntime {
    /// crun if it is installed and can work with this host's cgroups, else runc; `explicit`
    /// (a path) wins.
    pub fn detect(explicit: Option<&Path>, state: PathBuf) -> Option<OciRuntime> {
        if let Some(binary) = explicit {
            return Some(OciRuntime { binary: binary.to_path_buf(), state });
        }
        let crun = find_in_path("crun").filter(|_| !crun_refuses_hybrid_cgroups());
        crun.or_else(|| find_in_path("runc")).map(|binary| OciRuntime { binary, state })
    }

    /// The options every call takes: the state directory and, for crun, no cgroup management.
    /// The agent starts the runtime inside the task's cgroup (joined before exec, limits already
    /// set), so the container stays there. Left to manage that cgroup itself, crun kills every
    /// process in it when the container exits, itself included, and the task's exit status
    /// would be lost to a SIGKILL.
    fn global_args(&self) -> Vec<String> {
        let mut args = vec!["--root".into(), self.state.display().to_string()];
        if self.name() == "crun" {
            args.push("--cgroup-manager=disabled".into());
        }
        args
    }

    pub fn name(&self) -> String {
        self.binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The command line that runs the task's container in the foreground.
    pub fn run_args(&self, paths: &TaskPaths, container: &str) -> Vec<String> {
        let mut args = self.global_args();
        args.extend(["run".into(), "--bundle".into(), bundle(paths).display().to_string(), container.into()]);
        args
    }

    /// The command line that runs `argv` inside the task's running container (command checks).
    pub fn exec_args(&self, container: &str, argv: &[String]) -> Vec<String> {
        let mut args = self.global_args();
        args.extend(["exec".into(), container.into()]);
        args.extend(argv.iter().cloned());
        args
    }

    /// Removes what is left of the container (runtime state, its overlay). Idempotent.
    pub async fn remove(&self, paths: &TaskPaths, container: &str) {
        let deleted = tokio::process::Command::new(&self.binary)
            .args(self.global_args())
            .args(["delete", "--force", container])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        if let Err(error) = deleted {
            tracing::warn!(%container, %error, "cannot run the OCI runtime to delete the container");
        }
        let root = bundle(paths).join("rootfs");
        if let Ok(target) = CString::new(root.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 reads a valid NUL-terminated path; EINVAL (not mounted) is fine.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// crun refuses a host whose cgroup v2 mount has controllers while v1 hierarchies are in use
/// ("cgroups in hybrid mode not supported"); runc does not mind.
fn crun_refuses_hybrid_cgroups() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
    let unified = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    v1 && !unified.trim().is_empty()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

pub fn bundle(paths: &TaskPaths) -> PathBuf {
    paths.sandbox.join("bundle")
}

/// The argv the container runs: the spec's command (with its args) replaces the image's
/// entrypoint and command; args alone replace the image's command (as in Kubernetes).
pub fn argv(config: &RunConfig, command: &str, args: &[String]) -> Vec<String> {
    if !command.is_empty() {
        return std::iter::once(command.to_string()).chain(args.iter().cloned()).collect();
    }
    let mut argv = config.entrypoint.clone().unwrap_or_default();
    if args.is_empty() {
        argv.extend(config.cmd.clone().unwrap_or_default());
    } else {
        argv.extend(args.iter().cloned());
    }
    argv
}

/// Sets up the task's bundle: the overlay over the image's root (mounted once; an agent that
/// restarts finds it in place) and `config.json`.
pub fn prepare_bundle(
    paths: &TaskPaths,
    image: &Image,
    argv: &[String],
    env: &BTreeMap<String, String>,
    hostname: &str,
) -> Result<(), ImageError> {
    let bundle = bundle(paths);
    let root = bundle.join("rootfs");
    for dir in [bundle.join("upper"), bundle.join("work"), root.clone()] {
        std::fs::create_dir_all(&dir).map_err(super::io_err(&dir))?;
    }
    if argv.is_empty() {
        return Err(ImageError::Unsupported("the image has no entrypoint or command, and the spec gives none".into()));
    }
    if !is_mounted(&root) {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.rootfs.display(),
            bundle.join("upper").display(),
            bundle.join("work").display()
        );
        mount_overlay(&root, &options).map_err(super::io_err(&root))?;
    }
    let (uid, gid) = user(&image.rootfs, image.config.user.as_deref().unwrap_or(""))?;
    let mut environment: BTreeMap<String, String> = image
        .config
        .env
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    environment
        .entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    environment.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    environment.insert("CANOPY_SANDBOX".into(), SANDBOX_IN_CONTAINER.into());
    let config =
        config_json(paths, &root, argv, &environment, image.config.working_dir.as_deref(), (uid, gid), hostname);
    let path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(&config).map_err(|e| ImageError::Unpack(e.to_string()))?;
    std::fs::write(&path, json).map_err(super::io_err(&path))
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = path.display().to_string();
    mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

fn mount_overlay(target: &Path, options: &str) -> std::io::Result<()> {
    let target = CString::new(target.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let options = CString::new(options).map_err(std::io::Error::other)?;
    let kind = c"overlay";
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let result = unsafe { libc::mount(kind.as_ptr(), target.as_ptr(), kind.as_ptr(), 0, options.as_ptr().cast()) };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The image's `User` (`name`, `uid`, `uid:gid`, `name:group`) as numbers, names looked up in
/// the image's own /etc/passwd and /etc/group. Empty is root.
fn user(rootfs: &Path, spec: &str) -> Result<(u32, u32), ImageError> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user, group) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
    // The numeric fields (third and fourth) of `name`'s line in /etc/`file` of the image.
    let lookup = |file: &str, name: &str| -> Option<(Option<u32>, Option<u32>)> {
        let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse().ok());
            (fields.first() == Some(&name)).then(|| (number(2), number(3)))
        })
    };
    let unknown =
        |what: &str| ImageError::Unsupported(format!("the image's user {spec:?}: no such {what} in the image"));
    let (uid, default_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, lookup("passwd", user).and_then(|(_, gid)| gid).unwrap_or(0)),
        Err(_) => match lookup("passwd", user) {
            Some((Some(uid), gid)) => (uid, gid.unwrap_or(0)),
            _ => return Err(unknown("user")),
        },
    };
    let gid = match group {
        None => default_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("group", group).and_then(|(gid, _)| gid).ok_or_else(|| unknown("group"))?,
        },
    };
    Ok((uid, gid))
}

fn config_json(
    paths: &TaskPaths,
    root: &Path,
    argv: &[String],
    env: &BTreeMap<String, String>,
    working_dir: Option<&str>,
    (uid, gid): (u32, u32),
    hostname: &str,
) -> serde_json::Value {
    // Docker's default capabilities.
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    let mut mounts = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        serde_json::json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        serde_json::json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        serde_json::json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        serde_json::json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        serde_json::json!({"destination": SANDBOX_IN_CONTAINER, "type": "bind", "source": paths.sandbox, "options": ["rbind", "rw"]}),
    ];
    for file in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(file).exists() {
            mounts.push(
                serde_json::json!({"destination": file, "type": "bind", "source": file, "options": ["rbind", "ro"]}),
            );
        }
    }
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": argv,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": working_dir.filter(|d| d.starts_with('/')).unwrap_or("/"),
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": root, "readonly": false},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            // The task's cgroup, created (with its limits) by the agent before the runtime starts.
            "cgroupsPath": format!("/{}", paths.cgroup.display()),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_command_replaces_the_entrypoint_and_args_replace_the_image_command() {
        let config = RunConfig {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo hi".into()]),
            ..RunConfig::default()
        };
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&config, "", &[]), strings(&["/bin/sh", "-c", "echo hi"]));
        assert_eq!(argv(&config, "", &strings(&["exit 3"])), strings(&["/bin/sh", "-c", "exit 3"]));
        assert_eq!(argv(&config, "/bin/true", &strings(&["x"])), strings(&["/bin/true", "x"]));
    }

    #[test]
    fn users_are_looked_up_in_the_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n")
            .expect("passwd");
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        assert_eq!(user(dir.path(), "").expect("root"), (0, 0));
        assert_eq!(user(dir.path(), "www").expect("www"), (33, 34));
        assert_eq!(user(dir.path(), "1000:50").expect("numeric"), (1000, 50));
        assert_eq!(user(dir.path(), "www:staff").expect("names"), (33, 50));
        assert!(user(dir.path(), "nobody").is_err());
    }
}
