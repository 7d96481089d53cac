//! cgroup v1: one hierarchy per controller.

use super::{Limits, Result, keyed, make_dirs, read_u64, write};
use canopy_core::wire::Usage;
use std::path::{Path, PathBuf};

/// Mount points of the controllers Canopy uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounts {
    pub cpu: PathBuf,
    pub cpuacct: PathBuf,
    pub memory: PathBuf,
    pub pids: PathBuf,
}

impl Mounts {
    /// All four under one root, as `/sys/fs/cgroup/{cpu,cpuacct,memory,pids}` (or a temp dir).
    pub fn under(root: &Path) -> Mounts {
        Mounts {
            cpu: root.join("cpu"),
            cpuacct: root.join("cpuacct"),
            memory: root.join("memory"),
            pids: root.join("pids"),
        }
    }

    pub(super) fn from_mountinfo(mountinfo: &str) -> Option<Mounts> {
        let mut found: [Option<PathBuf>; 4] = Default::default();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
            if fields.get(dash + 1) != Some(&"cgroup") {
                continue;
            }
            let options = fields.get(dash + 3).copied().unwrap_or_default();
            for (slot, name) in ["cpu", "cpuacct", "memory", "pids"].iter().enumerate() {
                if options.split(',').any(|o| o == *name) && found[slot].is_none() {
                    found[slot] = Some(PathBuf::from(fields[4]));
                }
            }
        }
        let [cpu, cpuacct, memory, pids] = found;
        Some(Mounts { cpu: cpu?, cpuacct: cpuacct?, memory: memory?, pids: pids? })
    }

    /// The cgroup's directory in every hierarchy, deduplicated (cpu,cpuacct may share a mount).
    pub(super) fn dirs(&self, relative: &Path) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(4);
        for mount in [&self.memory, &self.cpu, &self.cpuacct, &self.pids] {
            let dir = mount.join(relative);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

pub(super) fn create(mounts: &Mounts, relative: &Path, limits: &Limits) -> Result<()> {
    for dir in mounts.dirs(relative) {
        make_dirs(&dir)?;
    }
    let memory = mounts.memory.join(relative);
    let bytes = limits.resources.memory_bytes.to_string();
    write(&memory.join("memory.limit_in_bytes"), &bytes)?;
    // With swap accounting, also cap memory+swap so the limit cannot be dodged by swapping.
    let memsw = memory.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        write(&memsw, &bytes)?;
    }
    let cpu = mounts.cpu.join(relative);
    let period: u64 = 100_000;
    write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
    let quota = (limits.resources.milli_cpu * period / 1000).max(1000);
    write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
    write(&cpu.join("cpu.shares"), &(limits.resources.milli_cpu * 1024 / 1000).max(2).to_string())?;
    write(&mounts.pids.join(relative).join("pids.max"), &limits.pids.to_string())?;
    Ok(())
}

pub(super) fn usage(mounts: &Mounts, relative: &Path) -> Usage {
    let memory = mounts.memory.join(relative);
    Usage {
        cpu_usec: read_u64(&mounts.cpuacct.join(relative).join("cpuacct.usage")).unwrap_or(0) / 1000,
        memory_bytes: read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0),
        memory_peak_bytes: read_u64(&memory.join("memory.max_usage_in_bytes")).unwrap_or(0),
        ..Usage::default()
    }
}

pub(super) fn oom_kills(mounts: &Mounts, relative: &Path) -> u64 {
    keyed(&mounts.memory.join(relative).join("memory.oom_control"), "oom_kill").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_controllers_in_mountinfo() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
31 25 0:27 / /sys/fs/cgroup/cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpuacct
32 25 0:28 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/pids rw,relatime shared:12 - cgroup cgroup rw,pids
34 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:13 - cgroup2 cgroup2 rw";
        let mounts = Mounts::from_mountinfo(mountinfo).expect("v1 mounts");
        assert_eq!(mounts, Mounts::under(Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn shared_cpu_cpuacct_mount_is_one_directory() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids";
        let mounts = Mounts::from_mountinfo(mountinfo).expect("v1 mounts");
        assert_eq!(mounts.cpu, mounts.cpuacct);
        assert_eq!(mounts.dirs(Path::new("t")).len(), 3);
    }

    #[test]
    fn no_memory_controller_means_not_v1() {
        let mountinfo = "34 25 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(Mounts::from_mountinfo(mountinfo), None);
    }
}
