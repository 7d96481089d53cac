//! The cgroup manager against this host's real cgroupfs (root, cgroup v1 here): a child joins
//! its cgroup before exec, limits hold, and a whole subtree can be killed.

use canopy_agent::cgroup::{Cgroups, Limits};
use canopy_core::Resources;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

fn unique_root() -> PathBuf {
    PathBuf::from(format!("canopy-agent-test-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()))
}

#[test]
fn a_child_joins_its_cgroup_before_exec_and_the_tree_can_be_killed() {
    let cgroups = Cgroups::detect().expect("this host has cgroups");
    let root = unique_root();
    let path = root.join("task");
    let cgroup = cgroups.create(&path, &Limits { resources: Resources::new(100, 32 << 20), pids: 16 }).expect("create");
    assert_eq!(cgroup.memory_limit(), Some(32 << 20));

    let join = cgroup.join_files();
    let mut command = std::process::Command::new("sleep");
    command.arg("30");
    // SAFETY: join_self only makes async-signal-safe calls.
    unsafe { command.pre_exec(move || join.join_self()) };
    let mut child = command.spawn().expect("spawn");
    assert_eq!(cgroup.pids(), vec![child.id()], "the child is the cgroup's only member");
    // Every hierarchy holds it, not just one.
    for procs in cgroup.procs_files() {
        let members = std::fs::read_to_string(&procs).expect("read procs");
        assert!(members.lines().any(|l| l.trim() == child.id().to_string()), "{}", procs.display());
    }

    let parent = cgroups.open(&root);
    parent.kill_tree().expect("kill tree");
    let status = child.wait().expect("wait");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    assert!(cgroup.procs_files().iter().all(|p| !p.exists()), "cgroups removed");
}

/// Usage from the kernel's accounting, through the agent's meter: a child that allocates and
/// touches 48 MiB, spins for a while, then holds the memory; its cgroup is sampled as a
/// heartbeat would sample it.
#[test]
fn usage_is_metered_from_the_real_cgroup() {
    use canopy_agent::meter::UsageMeter;
    use std::time::{Duration, Instant};
    const MIB: u64 = 1 << 20;
    let cgroups = Cgroups::detect().expect("this host has cgroups");
    let root = unique_root();
    let cgroup = cgroups
        .create(&root.join("task"), &Limits { resources: Resources::new(1000, 256 * MIB), pids: 16 })
        .expect("create");
    let join = cgroup.join_files();
    let mut command = std::process::Command::new("python3");
    let script =
        "import time\nx = b'x' * (48 << 20)\nend = time.time() + 0.4\nwhile time.time() < end: pass\ntime.sleep(5)";
    command.args(["-c", script]);
    // SAFETY: join_self only makes async-signal-safe calls.
    unsafe { command.pre_exec(move || join.join_self()) };
    let mut child = command.spawn().expect("spawn python3");
    let mut meter = UsageMeter::default();
    let started = Instant::now();
    let mut usage = meter.sample(started, cgroup.usage());
    while started.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(100));
        usage = meter.sample(Instant::now(), cgroup.usage());
    }
    let parent = cgroups.open(&root);
    parent.kill_tree().expect("kill tree");
    let _ = child.wait();
    assert!(usage.cpu_usec >= 300_000, "spun for 0.4 s: {usage:?}");
    assert!(usage.memory_peak_bytes >= 48 * MIB, "{usage:?}");
    assert!(usage.memory_bytes >= 48 * MIB, "still held: {usage:?}");
    assert!(usage.memory_sampled_ms >= 2400, "{usage:?}");
    // Held for most of the 2.5 s sampled: the average is well above half of it.
    let average = usage.memory_byte_seconds * 1000 / usage.memory_sampled_ms;
    assert!(average >= 24 * MIB && average <= usage.memory_peak_bytes, "average {average}: {usage:?}");
}
