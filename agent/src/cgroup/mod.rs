//! A small cgroupfs manager for cgroup v1 and v2.
//!
//! The root of each hierarchy is a constructor argument, so tests run the same code against a
//! temp directory; `detect` finds the real mounts. Every error carries the path it concerns.
//! A task's cgroup is joined by the child itself between fork and exec (`JoinFiles`), so all
//! of its memory is charged to its own cgroup from the first byte.

mod v1;
mod v2;

use canopy_core::Resources;
use canopy_core::wire::Usage;
use std::ffi::CString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {source}")]
pub struct CgroupError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub type Result<T> = std::result::Result<T, CgroupError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError { path: path.to_path_buf(), source }
}

/// Limits applied to one cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub resources: Resources,
    pub pids: u64,
}

/// Which cgroup version a host uses, and where its hierarchies are mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroups {
    /// One mount per controller; the paths of `cpu`, `cpuacct`, `memory`, `pids`.
    V1(v1::Mounts),
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

impl Cgroups {
    /// Finds the controllers on this host from /proc/self/mountinfo. Prefers v1 when its memory
    /// controller is mounted (a hybrid host keeps its controllers there), else v2.
    pub fn detect() -> Result<Cgroups> {
        let path = Path::new("/proc/self/mountinfo");
        let mountinfo = std::fs::read_to_string(path).map_err(io_err(path))?;
        if let Some(mounts) = v1::Mounts::from_mountinfo(&mountinfo) {
            return Ok(Cgroups::V1(mounts));
        }
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
            if fields.get(dash + 1) == Some(&"cgroup2") {
                let root = PathBuf::from(fields[4]);
                let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "memory") {
                    return Ok(Cgroups::V2(root));
                }
            }
        }
        Err(CgroupError {
            path: path.to_path_buf(),
            source: std::io::Error::other(
                "no cgroup v1 memory hierarchy and no cgroup v2 mount with the memory controller",
            ),
        })
    }

    pub fn version(&self) -> u8 {
        match self {
            Cgroups::V1(_) => 1,
            Cgroups::V2(_) => 2,
        }
    }

    /// Creates (or reuses) the cgroup at `relative` and applies `limits`.
    pub fn create(&self, relative: &Path, limits: &Limits) -> Result<Cgroup> {
        match self {
            Cgroups::V1(mounts) => v1::create(mounts, relative, limits),
            Cgroups::V2(root) => v2::create(root, relative, limits),
        }
        .map(|()| self.open(relative))
    }

    /// A handle on an existing cgroup (it may have vanished; reads then fail or are empty).
    pub fn open(&self, relative: &Path) -> Cgroup {
        Cgroup { cgroups: self.clone(), relative: relative.to_path_buf() }
    }
}

/// One cgroup: a task's, or a machine's slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    cgroups: Cgroups,
    relative: PathBuf,
}

impl Cgroup {
    /// The `cgroup.procs` files a process must write itself into to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match &self.cgroups {
            Cgroups::V1(mounts) => mounts.dirs(&self.relative).into_iter().map(|d| d.join("cgroup.procs")).collect(),
            Cgroups::V2(root) => vec![root.join(&self.relative).join("cgroup.procs")],
        }
    }

    /// Paths prepared for use between fork and exec, where allocating is not allowed.
    pub fn join_files(&self) -> JoinFiles {
        JoinFiles(
            self.procs_files()
                .into_iter()
                .filter_map(|p| CString::new(p.into_os_string().into_encoded_bytes()).ok())
                .collect(),
        )
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .procs_files()
            .first()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal_all(&self, signal: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    pub fn usage(&self) -> Usage {
        match &self.cgroups {
            Cgroups::V1(mounts) => v1::usage(mounts, &self.relative),
            Cgroups::V2(root) => v2::usage(&root.join(&self.relative)),
        }
    }

    /// How many times the kernel's OOM killer killed a process in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        match &self.cgroups {
            Cgroups::V1(mounts) => v1::oom_kills(mounts, &self.relative),
            Cgroups::V2(root) => v2::oom_kills(&root.join(&self.relative)),
        }
    }

    /// The memory limit in bytes as the kernel holds it.
    pub fn memory_limit(&self) -> Option<u64> {
        let path = match &self.cgroups {
            Cgroups::V1(mounts) => mounts.memory.join(&self.relative).join("memory.limit_in_bytes"),
            Cgroups::V2(root) => root.join(&self.relative).join("memory.max"),
        };
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// This cgroup and every cgroup below it, deepest first.
    pub fn subtree(&self) -> Vec<Cgroup> {
        let base = match &self.cgroups {
            Cgroups::V1(mounts) => mounts.memory.clone(),
            Cgroups::V2(root) => root.clone(),
        };
        let mut found = Vec::new();
        let mut stack = vec![self.relative.clone()];
        while let Some(relative) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(base.join(&relative)) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(relative.join(entry.file_name()));
                    }
                }
            }
            found.push(self.cgroups.open(&relative));
        }
        found.reverse();
        found
    }

    /// Kills every process in this cgroup and below, then removes the cgroups. This is what a
    /// machine failure looks like, and how a whole machine's slice is torn down.
    pub fn kill_tree(&self) -> Result<()> {
        let tree = self.subtree();
        for _ in 0..100 {
            let mut alive = false;
            for cgroup in &tree {
                if !cgroup.pids().is_empty() {
                    alive = true;
                    cgroup.signal_all(libc::SIGKILL);
                }
            }
            if !alive {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tree.iter().try_for_each(Cgroup::remove)
    }

    /// Removes the (empty) cgroup. Missing directories are fine.
    pub fn remove(&self) -> Result<()> {
        let dirs = match &self.cgroups {
            Cgroups::V1(mounts) => mounts.dirs(&self.relative),
            Cgroups::V2(root) => vec![root.join(&self.relative)],
        };
        for dir in dirs {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CgroupError { path: dir, source: e }),
            }
        }
        Ok(())
    }
}

/// The `cgroup.procs` paths of a cgroup, ready for a child to join between fork and exec.
#[derive(Clone, Debug)]
pub struct JoinFiles(Vec<CString>);

impl JoinFiles {
    /// Moves the calling process into the cgroup. Only async-signal-safe calls: meant for
    /// `pre_exec`.
    pub fn join_self(&self) -> std::io::Result<()> {
        for path in &self.0 {
            // SAFETY: open/write/close on a valid NUL-terminated path and a static buffer; all
            // are async-signal-safe, which is what a forked child may call before exec.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
        }
        Ok(())
    }
}

/// `mkdir -p` that tolerates concurrent creators: cgroupfs may answer a racing mkdir of the
/// same directory with errors `create_dir_all` does not expect.
fn make_dirs(dir: &Path) -> Result<()> {
    let mut path = PathBuf::new();
    for part in dir.components() {
        path.push(part);
        if path.is_dir() {
            continue;
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(_) if path.is_dir() => {}
            Err(source) => return Err(CgroupError { path, source }),
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(io_err(path))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file such as `memory.events` or `cpu.stat`.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { resources: Resources::new(250, 64 << 20), pids: 32 }
    }

    #[test]
    fn v1_writes_limits_in_each_hierarchy() {
        let root = tempfile::tempdir().expect("tempdir");
        let cgroups = Cgroups::V1(v1::Mounts::under(root.path()));
        let cgroup = cgroups.create(Path::new("slice/task"), &limits()).expect("create");
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).expect(p);
        assert_eq!(read("memory/slice/task/memory.limit_in_bytes"), (64 << 20).to_string());
        assert_eq!(read("cpu/slice/task/cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu/slice/task/cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu/slice/task/cpu.shares"), "256");
        assert_eq!(read("pids/slice/task/pids.max"), "32");
        assert_eq!(cgroup.procs_files().len(), 4);
        assert_eq!(cgroup.memory_limit(), Some(64 << 20));
    }

    #[test]
    fn v2_enables_controllers_down_the_tree_and_writes_limits() {
        let root = tempfile::tempdir().expect("tempdir");
        let cgroups = Cgroups::V2(root.path().to_path_buf());
        let cgroup = cgroups.create(Path::new("slice/task"), &limits()).expect("create");
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).expect(p);
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(read("slice/cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(read("slice/task/memory.max"), (64 << 20).to_string());
        assert_eq!(read("slice/task/cpu.max"), "25000 100000");
        assert_eq!(read("slice/task/cpu.weight"), "25");
        assert_eq!(read("slice/task/pids.max"), "32");
        assert_eq!(cgroup.procs_files(), vec![root.path().join("slice/task/cgroup.procs")]);
    }

    #[test]
    fn v2_reads_usage_and_oom_kills() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("t");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").expect("write");
        std::fs::write(dir.join("memory.current"), "4096\n").expect("write");
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n").expect("write");
        let cgroup = Cgroups::V2(root.path().to_path_buf()).open(Path::new("t"));
        assert_eq!(
            cgroup.usage(),
            Usage { cpu_usec: 1500, memory_bytes: 4096, memory_peak_bytes: 4096, ..Usage::default() }
        );
        assert_eq!(cgroup.oom_kills(), 1);
        // Linux 5.19 and later keep the peak.
        std::fs::write(dir.join("memory.peak"), "8192\n").expect("write");
        assert_eq!(cgroup.usage().memory_peak_bytes, 8192);
    }

    #[test]
    fn v1_reads_usage_from_cpuacct_and_memory() {
        let root = tempfile::tempdir().expect("tempdir");
        let mounts = v1::Mounts::under(root.path());
        for (file, text) in [
            ("cpuacct/t/cpuacct.usage", "2500000\n"),
            ("memory/t/memory.usage_in_bytes", "4096\n"),
            ("memory/t/memory.max_usage_in_bytes", "16384\n"),
        ] {
            let path = root.path().join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let cgroup = Cgroups::V1(mounts).open(Path::new("t"));
        assert_eq!(
            cgroup.usage(),
            Usage { cpu_usec: 2500, memory_bytes: 4096, memory_peak_bytes: 16384, ..Usage::default() }
        );
    }

    #[test]
    fn errors_name_the_path() {
        let cgroups = Cgroups::V2(PathBuf::from("/proc/definitely/not/here"));
        let error = cgroups.create(Path::new("x"), &limits()).expect_err("cannot create under /proc");
        assert!(error.to_string().contains("/proc/definitely"), "{error}");
    }
}
