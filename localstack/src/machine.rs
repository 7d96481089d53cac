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

pub struct LocalMachine {
    pub spec: MachineSpec,
    pub slice: Cgroup,
    pub state_dir: PathBuf,
    cgroups: Cgroups,
    slice_path: PathBuf,
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
        let slice_path = cgroup_root.join(&spec.name);
        // A leftover slice from an earlier run would hold stale processes: start clean.
        cgroups.open(&slice_path).kill_tree()?;
        // The slice holds the agent and its tasks; the agent's own share is small, so the
        // slice gets the machine's capacity plus room for the agent.
        let agent_overhead = Resources::new(100, 64 << 20);
        let slice = cgroups.create(&slice_path, &Limits { resources: spec.capacity + agent_overhead, pids: 4096 })?;
        cgroups.create(&slice_path.join("agent"), &Limits { resources: agent_overhead, pids: 256 })?;
        std::fs::create_dir_all(state_dir)?;
        let mut machine = LocalMachine {
            spec,
            slice,
            state_dir: state_dir.to_path_buf(),
            cgroups,
            slice_path,
            agent: None,
            control_url: control_url.to_string(),
            binaries: binaries.clone(),
        };
        machine.start_agent(Some(join_token))?;
        Ok(machine)
    }

    /// (Re)starts the agent process; `join_token` is only needed before the first join.
    pub fn start_agent(&mut self, join_token: Option<&str>) -> Result<()> {
        let agent_cgroup = self.cgroups.open(&self.slice_path.join("agent"));
        let join = agent_cgroup.join_files();
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
            .arg(self.slice_path.join("workloads"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (key, value) in &self.spec.labels {
            command.arg("--label").arg(format!("{key}={value}"));
        }
        if let Some(token) = join_token {
            command.env("CANOPY_JOIN_TOKEN", token);
        }
        // SAFETY: only async-signal-safe calls between fork and exec (see JoinFiles, setsid).
        unsafe {
            command.pre_exec(move || {
                libc::setsid();
                join.join_self()
            });
        }
        self.agent = Some(command.spawn().with_context(|| format!("starting {}", self.binaries.agent.display()))?);
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
        let slice = self.slice.clone();
        tokio::task::spawn_blocking(move || slice.kill_tree()).await??;
        Ok(())
    }

    /// Recreates the slice after a failure and starts the agent again with its saved
    /// credentials (the machine "reboots").
    pub async fn reboot(&mut self) -> Result<()> {
        let overhead = Resources::new(100, 64 << 20);
        self.slice =
            self.cgroups.create(&self.slice_path, &Limits { resources: self.spec.capacity + overhead, pids: 4096 })?;
        self.cgroups.create(&self.slice_path.join("agent"), &Limits { resources: overhead, pids: 256 })?;
        self.start_agent(None)
    }

    /// Pids of the machine's task processes (not the agent).
    pub fn task_pids(&self) -> Vec<u32> {
        self.cgroups.open(&self.slice_path.join("workloads")).subtree().iter().flat_map(Cgroup::pids).collect()
    }

    /// The cgroup of one task on this machine.
    pub fn task_cgroup(&self, task_id: &str) -> Cgroup {
        self.cgroups.open(&self.slice_path.join("workloads").join(task_id))
    }
}

impl Drop for LocalMachine {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            let _ = agent.start_kill();
        }
        if let Err(error) = self.slice.kill_tree() {
            tracing::warn!(%error, machine = %self.spec.name, "cannot remove machine slice");
        }
    }
}
