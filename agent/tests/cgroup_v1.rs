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
