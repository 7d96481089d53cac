//! cgroup v2: the unified hierarchy.

use super::{Limits, Result, keyed, make_dirs, read_u64, write};
use canopy_core::wire::Usage;
use std::path::Path;

pub(super) fn create(root: &Path, relative: &Path, limits: &Limits) -> Result<()> {
    let dir = root.join(relative);
    make_dirs(&dir)?;
    // Controllers must be enabled in every ancestor's subtree_control, from the root down.
    let mut ancestor = root.to_path_buf();
    for part in relative.parent().into_iter().flat_map(|p| p.components()) {
        enable_controllers(&ancestor)?;
        ancestor.push(part);
    }
    enable_controllers(&ancestor)?;
    write(&dir.join("memory.max"), &limits.resources.memory_bytes.to_string())?;
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        write(&swap, "0")?;
    }
    let period: u64 = 100_000;
    let quota = (limits.resources.milli_cpu * period / 1000).max(1000);
    write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
    write(&dir.join("cpu.weight"), &(limits.resources.milli_cpu / 10).clamp(1, 10_000).to_string())?;
    write(&dir.join("pids.max"), &limits.pids.to_string())?;
    Ok(())
}

fn enable_controllers(dir: &Path) -> Result<()> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).unwrap_or_default();
    let missing: Vec<String> = ["cpu", "memory", "pids"]
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&control, &missing.join(" "))
}

pub(super) fn usage(dir: &Path) -> Usage {
    let current = read_u64(&dir.join("memory.current")).unwrap_or(0);
    Usage {
        cpu_usec: keyed(&dir.join("cpu.stat"), "usage_usec").unwrap_or(0),
        memory_bytes: current,
        // memory.peak exists from Linux 5.19.
        memory_peak_bytes: read_u64(&dir.join("memory.peak")).unwrap_or(current),
        ..Usage::default()
    }
}

pub(super) fn oom_kills(dir: &Path) -> u64 {
    keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0)
}
