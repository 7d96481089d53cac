//! Starting one task: a process in its own session and its own cgroup, with its sandbox as
//! working directory and its output appended to log files there.

use crate::cgroup::{Cgroup, Cgroups, Limits};
use canopy_core::wire::TaskAssignment;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("sandbox {path}: {source}")]
    Sandbox { path: PathBuf, source: std::io::Error },
    #[error("cannot start {command:?}: {source}")]
    Spawn { command: String, source: std::io::Error },
}

/// Where a task lives on this machine.
#[derive(Clone, Debug)]
pub struct TaskPaths {
    pub sandbox: PathBuf,
    pub cgroup: PathBuf,
}

impl TaskPaths {
    pub fn new(state_dir: &Path, cgroup_parent: &Path, task: &uuid::Uuid) -> TaskPaths {
        TaskPaths {
            sandbox: state_dir.join("tasks").join(task.to_string()),
            cgroup: cgroup_parent.join(task.to_string()),
        }
    }

    pub fn log(&self, stream: &str) -> PathBuf {
        self.sandbox.join(format!("{stream}.log"))
    }

    /// Both of the task's logs.
    pub fn logs(&self) -> [PathBuf; 2] {
        [self.log("stdout"), self.log("stderr")]
    }

    /// Present once the task has ended for good (not between restarts): log followers stop
    /// there.
    pub fn ended(&self) -> PathBuf {
        self.sandbox.join("ended")
    }
}

/// The environment a task sees: its spec's env, then what Canopy adds (which wins).
pub fn environment(
    assignment: &TaskAssignment,
    address: &str,
    ports: &BTreeMap<String, u16>,
) -> BTreeMap<String, String> {
    let mut env = assignment.env.clone();
    env.insert("CANOPY_TASK_ID".into(), assignment.task_id.to_string());
    env.insert("CANOPY_APP".into(), assignment.app.clone());
    env.insert("HOST".into(), address.to_string());
    for (index, name) in assignment.ports.iter().enumerate() {
        if let Some(port) = ports.get(name) {
            let key = format!("PORT_{}", name.to_ascii_uppercase().replace('-', "_"));
            env.insert(key, port.to_string());
            if index == 0 {
                env.insert("PORT".into(), port.to_string());
            }
        }
    }
    env
}

/// What a task's process executes: its own command, or the OCI runtime running its container.
pub struct Invocation<'a> {
    pub program: &'a str,
    pub args: &'a [String],
}

/// Creates the task's cgroup and starts its process inside it. When this returns, the
/// process has exec'd (or the error says why not).
pub fn launch(
    cgroups: &Cgroups,
    paths: &TaskPaths,
    assignment: &TaskAssignment,
    invocation: &Invocation<'_>,
    env: &BTreeMap<String, String>,
) -> Result<(tokio::process::Child, Cgroup), LaunchError> {
    let sandbox_err = |source| LaunchError::Sandbox { path: paths.sandbox.clone(), source };
    std::fs::create_dir_all(&paths.sandbox).map_err(sandbox_err)?;
    // A task started again after an agent restart has not ended any more.
    match std::fs::remove_file(paths.ended()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(sandbox_err(e)),
        _ => {}
    }
    let limits = Limits { resources: assignment.resources, pids: assignment.pids_limit };
    let cgroup = cgroups.create(&paths.cgroup, &limits)?;
    let open_log = |stream: &str| OpenOptions::new().create(true).append(true).open(paths.log(stream));
    let stdout = open_log("stdout").map_err(sandbox_err)?;
    let stderr = open_log("stderr").map_err(sandbox_err)?;

    let mut command = tokio::process::Command::new(invocation.program);
    command
        .args(invocation.args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
        .current_dir(&paths.sandbox)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    let join = cgroup.join_files();
    // SAFETY: the closure only calls async-signal-safe functions (setsid, open, write, close)
    // on data prepared before fork.
    unsafe {
        command.pre_exec(move || {
            // Own session: the task outlives the agent and is not hit by its terminal's signals.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            join.join_self()
        });
    }
    let child =
        command.spawn().map_err(|source| LaunchError::Spawn { command: invocation.program.to_string(), source })?;
    Ok((child, cgroup))
}

/// Process start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it
/// identifies a process across pid reuse.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are unambiguous.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)).is_some_and(|state| state != "Z" && state != "X")
}
