//! A local machine: a cgroup slice with the machine's capacity, a real agent in
//! `<slice>/agent`, and its tasks under `<slice>/workloads`.

use crate::process::Binaries;
use anyhow::{Context, Result};
use canopy_agent::cgroup::{Cgroup, Cgroups, Limits};
use canopy_core::Resources;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

#[derive(Clone, Debug)]
pub struct MachineSpec {
    pub name: String,
    /// Loopback address the machine's tasks bind to, e.g. 127.0.1.1.
    pub address: String,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
}

/// Room in a machine's slice for its agent, on top of what the machine offers to tasks.
const AGENT_OVERHEAD: Resources = Resources { milli_cpu: 100, memory_bytes: 64 << 20 };

/// A machine's cgroup slice: `<path>` limited to the machine's size, with the agent in
/// `<path>/agent` and tasks under `<path>/workloads`.
pub struct Slice {
    cgroups: Cgroups,
    path: PathBuf,
    cgroup: Cgroup,
}

impl Slice {
    /// Creates the slice, first killing whatever a leftover slice of that name still holds.
    pub fn create(cgroups: &Cgroups, path: &Path, capacity: Resources) -> Result<Slice> {
        cgroups.open(path).kill_tree()?;
        let cgroup = cgroups.create(path, &Limits { resources: capacity + AGENT_OVERHEAD, pids: 4096 })?;
        cgroups.create(&path.join("agent"), &Limits { resources: AGENT_OVERHEAD, pids: 256 })?;
        Ok(Slice { cgroups: cgroups.clone(), path: path.to_path_buf(), cgroup })
    }

    /// Where the agent puts its tasks' cgroups.
    pub fn workloads(&self) -> PathBuf {
        self.path.join("workloads")
    }

    /// Starts `command` (the agent, or a bootstrap that execs it) in the agent's cgroup and its
    /// own session.
    pub fn spawn_agent(&self, mut command: Command) -> Result<Child> {
        let join = self.cgroups.open(&self.path.join("agent")).join_files();
        // SAFETY: only async-signal-safe calls between fork and exec (see JoinFiles, setsid).
        unsafe {
            command.pre_exec(move || {
                libc::setsid();
                join.join_self()
            });
        }
        Ok(command.spawn()?)
    }

    /// Pids of the task processes (not the agent).
    pub fn task_pids(&self) -> Vec<u32> {
        self.cgroups.open(&self.workloads()).subtree().iter().flat_map(Cgroup::pids).collect()
    }

    /// Kills everything in the slice and removes it: the machine is gone.
    pub fn destroy(&self) -> Result<()> {
        Ok(self.cgroup.kill_tree()?)
    }
}

pub struct LocalMachine {
    pub spec: MachineSpec,
    pub slice: Slice,
    pub state_dir: PathBuf,
    cgroups: Cgroups,
    agent: Option<Child>,
    control_url: String,
    binaries: Binaries,
}

impl LocalMachine {
    /// Creates the machine's slice under `cgroup_root` (relative to the cgroup hierarchy) and
    /// starts its agent, which joins with `join_token`.
    pub async fn start(
        binaries: &Binaries,
        spec: MachineSpec,
        cgroup_root: &Path,
        state_dir: &Path,
        control_url: &str,
        join_token: &str,
    ) -> Result<LocalMachine> {
        let cgroups = Cgroups::detect()?;
        let slice = Slice::create(&cgroups, &cgroup_root.join(&spec.name), spec.capacity)?;
        std::fs::create_dir_all(state_dir)?;
        let mut machine = LocalMachine {
            spec,
            slice,
            state_dir: state_dir.to_path_buf(),
            cgroups,
            agent: None,
            control_url: control_url.to_string(),
            binaries: binaries.clone(),
        };
        machine.start_agent(Some(join_token))?;
        Ok(machine)
    }

    /// (Re)starts the agent process; `join_token` is only needed before the first join.
    pub fn start_agent(&mut self, join_token: Option<&str>) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.state_dir.join("agent.log"))?;
        let mut command = Command::new(&self.binaries.agent);
        command
            .arg("--name")
            .arg(&self.spec.name)
            .arg("--control-url")
            .arg(&self.control_url)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--address")
            .arg(&self.spec.address)
            .arg("--cpu")
            .arg(self.spec.capacity.milli_cpu.to_string())
            .arg("--memory")
            .arg(self.spec.capacity.memory_bytes.to_string())
            .arg("--cgroup-parent")
            .arg(self.slice.workloads())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (key, value) in &self.spec.labels {
            command.arg("--label").arg(format!("{key}={value}"));
        }
        if let Some(token) = join_token {
            command.env("CANOPY_JOIN_TOKEN", token);
        }
        self.agent = Some(
            self.slice.spawn_agent(command).with_context(|| format!("starting {}", self.binaries.agent.display()))?,
        );
        Ok(())
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(Child::id)
    }

    /// Kills only the agent (SIGKILL), leaving its tasks running: an agent crash.
    pub async fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill().await;
        }
    }

    /// Kills the agent and every process in the machine's slice: a machine failure.
    pub async fn fail(&mut self) -> Result<()> {
        self.kill_agent().await;
        let cgroup = self.slice.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.kill_tree()).await??;
        Ok(())
    }

    /// Pids of the machine's task processes (not the agent).
    pub fn task_pids(&self) -> Vec<u32> {
        self.slice.task_pids()
    }

    /// The cgroup of one task on this machine.
    pub fn task_cgroup(&self, task_id: &str) -> Cgroup {
        self.cgroups.open(&self.slice.workloads().join(task_id))
    }
}

impl Drop for LocalMachine {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            let _ = agent.start_kill();
        }
        if let Err(error) = self.slice.destroy() {
            tracing::warn!(%error, machine = %self.spec.name, "cannot remove machine slice");
        }
    }
}
