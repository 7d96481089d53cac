//! The scheduler's vocabulary: what it is given (machines, running and pending tasks) and what
//! it answers (a [`Plan`]).
//!
//! These are plain data with `Default`s so callers can build them with `..Default::default()`
//! and grow with the scheduler. They are deliberately not the store's rows nor the REST types:
//! the control service maps its rows onto them, and serializes only the plan it chooses to show.

use crate::resources::Resources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use uuid::Uuid;

use super::catalog::Catalog;
use super::policy::Policy;

/// Micro-dollars (10^-6 USD) per hour: every price and cost in the scheduler.
pub type MicrosPerHour = u64;

/// Whether a machine may receive new work. Draining machines keep their tasks but get no more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Booting: counted as capacity (work waits for the boot) but not yet running anything.
    Provisioning,
    #[default]
    Ready,
    Draining,
}

/// A machine as the scheduler sees it: what it has, what is already taken, who runs there,
/// where it is and what it costs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineView {
    pub id: Uuid,
    pub capacity: Resources,
    pub allocated: Resources,
    pub labels: BTreeMap<String, String>,
    /// How many tasks of each group (app) already run here, for spreading.
    pub group_counts: BTreeMap<String, u32>,
    pub provider: String,
    pub region: String,
    pub zone: String,
    /// The instance type (or owned machine class) it was bought as.
    pub offering: String,
    /// Empty means "amd64", which is what a machine without the label almost always is.
    pub arch: String,
    pub gpus: u32,
    pub gpus_allocated: u32,
    /// Spot machines may be taken back by the provider: only interruptible tasks go there.
    pub spot: bool,
    /// What the machine costs per hour while it exists.
    pub price: MicrosPerHour,
    /// Owned capacity (bare metal, a private OpenStack) whose cost is paid whether used or not:
    /// keeping it busy costs nothing extra and giving it back saves nothing.
    pub sunk: bool,
    pub state: MachineState,
    /// Consolidation never drains this machine.
    pub do_not_disrupt: bool,
}

impl MachineView {
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }

    pub fn free_gpus(&self) -> u32 {
        self.gpus.saturating_sub(self.gpus_allocated)
    }

    pub fn arch(&self) -> &str {
        if self.arch.is_empty() { "amd64" } else { &self.arch }
    }
}

/// A task already placed, for preemption and consolidation. Its resources must already be
/// counted in its machine's `allocated` (and its group in `group_counts`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunningTask {
    pub task: TaskAsk,
    pub machine: Uuid,
    /// Consolidation never moves this task (and so never drains its machine).
    pub do_not_disrupt: bool,
}

/// The world at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Machines that exist (any state); only `Ready`/`Provisioning` ones receive work.
    pub machines: Vec<MachineView>,
    /// Tasks running on those machines. Needed only for preemption and consolidation.
    pub running: Vec<RunningTask>,
    /// What can be bought. Empty: the scheduler only places, it never provisions.
    pub catalog: Arc<Catalog>,
    pub policy: Policy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Long-running; replicas are spread.
    #[default]
    Service,
    /// Runs to completion.
    Batch,
}

/// Hard requirements on the machine a task runs on. An empty list means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Constraints {
    pub providers: Vec<String>,
    pub regions: Vec<String>,
    pub zones: Vec<String>,
    /// Every one of these must be present on the machine with this value.
    pub labels: BTreeMap<String, String>,
    pub arch: Option<String>,
}

/// How an app's replicas are spread. Soft preferences except `max_per_machine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Spread {
    /// Prefer machines with fewer replicas of the same group.
    pub machines: bool,
    /// Hard limit of replicas of the group on one machine; 0 means no limit.
    pub max_per_machine: u32,
    /// Prefer zones with fewer replicas of the group.
    pub zones: bool,
    /// Prefer providers with fewer replicas of the group.
    pub providers: bool,
}

impl Default for Spread {
    fn default() -> Self {
        Spread { machines: true, max_per_machine: 0, zones: false, providers: false }
    }
}

/// A task waiting for a machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskAsk {
    pub id: Uuid,
    /// The app (or job) the task belongs to; replicas of one group are spread.
    pub group: String,
    pub resources: Resources,
    /// Whole GPUs the task needs on its machine.
    pub gpus: u32,
    /// Higher goes first, and may evict lower-priority preemptible tasks.
    pub priority: i32,
    pub kind: WorkloadKind,
    /// May be killed at any moment without harm: the only work allowed on spot machines.
    pub interruptible: bool,
    /// May be evicted (once running) to make room for higher-priority work.
    pub preemptible: bool,
    pub constraints: Constraints,
    pub spread: Spread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub task: Uuid,
    pub machine: Uuid,
}

/// Buy one machine of `offering` in `zone` for `tasks`. The tasks are not in `placements`:
/// they are meant for the machine once it is ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    /// An id the control service may give the machine, derived from the seed.
    pub id: Uuid,
    pub provider: String,
    pub region: String,
    /// Empty when the catalog names no zones: the provider chooses.
    pub zone: String,
    pub instance_type: String,
    pub capacity: Resources,
    pub spot: bool,
    /// The hourly price of the machine (the amortized rate for owned capacity).
    pub price: MicrosPerHour,
    pub sunk: bool,
    pub tasks: Vec<Uuid>,
}

/// Evict `task` from `machine` so that higher-priority `for_task` can run there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    pub task: Uuid,
    pub machine: Uuid,
    pub for_task: Uuid,
}

/// Move a running task elsewhere (consolidation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub task: Uuid,
    pub from: Uuid,
    /// An existing machine's id, or the id of a machine in `Plan::provisions`.
    pub to: Uuid,
}

/// Give a machine back once its tasks have moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub machine: Uuid,
    /// What the fleet saves per hour once this machine (and any replacement) is settled.
    pub saving: MicrosPerHour,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Cpu,
    Memory,
    Gpu,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Cpu => "cpu",
            Dimension::Memory => "memory",
            Dimension::Gpu => "gpu",
        }
    }
}

/// The rule that excluded a machine (or an offering) before resources were even compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    Provider,
    Region,
    Zone,
    Label,
    Arch,
    /// A spot machine (or price) for work that is not interruptible, or not allowed by policy.
    Spot,
    /// `Spread::max_per_machine` already reached.
    Spread,
    /// Draining: takes no new work.
    State,
    /// Excluded by the policy (provider or region not allowed).
    Policy,
    /// The provider's quota is used up.
    Quota,
}

impl Filter {
    pub fn as_str(self) -> &'static str {
        match self {
            Filter::Provider => "provider",
            Filter::Region => "region",
            Filter::Zone => "zone",
            Filter::Label => "label",
            Filter::Arch => "arch",
            Filter::Spot => "spot",
            Filter::Spread => "spread",
            Filter::State => "state",
            Filter::Policy => "policy",
            Filter::Quota => "quota",
        }
    }
}

/// Why a task was not placed: how many machines (and offerings) were looked at, which rule
/// filtered how many, and which resource ran out on how many.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoFit {
    pub machines_evaluated: u32,
    /// For each rule, how many machines it excluded.
    pub filtered: BTreeMap<Filter, u32>,
    /// For each resource, on how many machines it was the one that did not suffice.
    pub exhausted: BTreeMap<Dimension, u32>,
    /// Offerings looked at by the provisioning planner (0 when there is no catalog).
    pub offerings_evaluated: u32,
    pub offerings_filtered: BTreeMap<Filter, u32>,
    /// Offerings that passed every rule but are too small, by the first resource that is short.
    pub offerings_too_small: BTreeMap<Dimension, u32>,
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.machines_evaluated == 0 {
            f.write_str("no machine is ready to receive work")?;
        } else {
            write!(f, "no machine fits (evaluated {}", self.machines_evaluated)?;
            for (filter, count) in &self.filtered {
                write!(f, "; {} filtered {count}", filter.as_str())?;
            }
            for (dimension, count) in &self.exhausted {
                write!(f, "; {} exhausted on {count}", dimension.as_str())?;
            }
            f.write_str(")")?;
        }
        if self.offerings_evaluated > 0 {
            write!(f, "; no offering fits (evaluated {}", self.offerings_evaluated)?;
            for (filter, count) in &self.offerings_filtered {
                write!(f, "; {} filtered {count}", filter.as_str())?;
            }
            for (dimension, count) in &self.offerings_too_small {
                write!(f, "; too little {} on {count}", dimension.as_str())?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub task: Uuid,
    pub reason: NoFit,
}

/// Everything the scheduler decided in one pass. Applying it is the caller's job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub unplaced: Vec<Unplaced>,
    pub provisions: Vec<Provision>,
    pub preemptions: Vec<Preemption>,
    pub moves: Vec<Move>,
    pub drains: Vec<Drain>,
}
