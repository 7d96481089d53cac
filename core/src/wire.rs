//! The agent protocol: what a `canopy-agent` and the control service say to each other.
//!
//! The agent pulls: it joins once with a single-use join token, then heartbeats with the full
//! actual state of its tasks and receives the full desired set in the answer. Both sides are
//! level-triggered, so a lost message is repaired by the next one. Versioned by
//! `PROTOCOL_VERSION`; the control service refuses versions it does not speak.

use crate::artifact::ArtifactSpec;
use crate::image::ImageAuth;
use crate::resources::Resources;
use crate::spec::{HealthCheck, LogsSpec, RestartSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Version 2: [`Usage`] carries the integral of sampled memory usage (for averages), and a
/// task's final report carries its last usage instead of zeros.
pub const PROTOCOL_VERSION: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub protocol: u32,
    pub join_token: String,
    pub name: String,
    /// The address tasks on this machine are reachable at (their ports bind to it).
    pub address: String,
    /// Where the agent's own API (logs) listens, as `host:port`.
    pub agent_endpoint: String,
    pub capacity: Resources,
    pub cgroup_version: u8,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub machine_id: Uuid,
    /// The agent's own credential for every later call.
    pub agent_token: String,
    /// What the control service presents when it calls the agent (logs).
    pub control_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub protocol: u32,
    pub agent_endpoint: String,
    pub tasks: Vec<TaskReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Every task this machine should be running. Anything else it runs must stop.
    pub desired: Vec<TaskAssignment>,
    pub heartbeat_interval_ms: u64,
}

/// Everything an agent needs to run one task; it never asks for more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssignment {
    pub task_id: Uuid,
    pub app: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub pids_limit: u64,
    pub ports: Vec<String>,
    pub health: Option<HealthCheck>,
    pub restart: RestartSpec,
    pub stop_grace_ms: u64,
    /// Log retention. Added without a protocol version change: an older control service
    /// leaves it out and the agent keeps the default limits; an older agent ignores it.
    #[serde(default)]
    pub logs: LogsSpec,
    /// What the agent fetches before the first start, and the image to run the command in.
    /// Added like `logs`, without a version change: an older control service leaves them
    /// out. An older agent would ignore them, so apps that use them need agents of this
    /// version (which report `preparing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_auth: Option<ImageAuth>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Fetching its artifacts or pulling its image; nothing runs yet (`progress` says how far).
    Preparing,
    /// Running (healthy or not: see `healthy`).
    Running,
    /// Ended and waiting for its restart backoff.
    Restarting,
    /// Ended with status 0, not restarted.
    Exited,
    /// Ended badly, not restarted.
    Failed,
    /// Stopped because it is no longer desired.
    Stopped,
}

impl RunState {
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Exited | RunState::Failed | RunState::Stopped)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task_id: Uuid,
    pub state: RunState,
    pub pid: Option<u32>,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// `None` while the task has no health check or is still in its grace period.
    pub healthy: Option<bool>,
    pub restarts: u32,
    /// How the last run ended, if it has.
    pub last_exit: Option<ExitStatus>,
    pub usage: Usage,
    /// While `preparing`: what is being fetched and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (the cgroup's oom_kill counter rose).
    pub oom_killed: bool,
    pub message: String,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom_killed
    }
}

/// A task's resource use from its cgroup's accounting. Counters are cumulative since the agent
/// started metering the task (they restart from zero when an agent restarts; the control
/// service treats a decrease as a restart and takes the new value as the increase).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of the task's cgroup (cpuacct.usage / cpu.stat usage_usec), in microseconds.
    pub cpu_usec: u64,
    /// Memory in use at the last sample (memory.usage_in_bytes / memory.current).
    pub memory_bytes: u64,
    /// Highest memory use the kernel saw (memory.max_usage_in_bytes / memory.peak).
    pub memory_peak_bytes: u64,
    /// Sampled memory use integrated over time, in byte seconds; divided by
    /// `memory_sampled_ms / 1000` it is the average.
    pub memory_byte_seconds: u64,
    /// The time the memory integral covers, in milliseconds.
    pub memory_sampled_ms: u64,
}
