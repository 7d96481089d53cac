//! Placement: the one entry point through which every task gets a machine.
//!
//! `schedule` is a pure function of its inputs: the same snapshot, pending list and seed give
//! the same plan. It never overcommits a machine, and "does not fit" is an outcome carried in
//! the plan with its reasons, never an error. The scoring inside is a best-fit that spreads an
//! app's replicas across machines; the cost-aware scheduler replaces the inside, not the call.

use crate::resources::Resources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// A machine as the scheduler sees it: what it has, what is already taken, who runs there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineView {
    pub id: Uuid,
    pub capacity: Resources,
    pub allocated: Resources,
    pub labels: BTreeMap<String, String>,
    /// How many tasks of each group (app) already run here, for spreading.
    pub group_counts: BTreeMap<String, u32>,
}

impl MachineView {
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }
}

/// The world at one instant: only machines that may receive work belong in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub machines: Vec<MachineView>,
}

/// A task waiting for a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskAsk {
    pub id: Uuid,
    /// The app (or job) the task belongs to; replicas of one group are spread.
    pub group: String,
    pub resources: Resources,
    /// Higher goes first.
    pub priority: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub task: Uuid,
    pub machine: Uuid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Cpu,
    Memory,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Cpu => "cpu",
            Dimension::Memory => "memory",
        }
    }
}

/// Why a task was not placed: how many machines were looked at and what ran out on them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoFit {
    pub machines_evaluated: u32,
    /// For each resource, on how many machines it was the one that did not suffice.
    pub exhausted: BTreeMap<Dimension, u32>,
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.machines_evaluated == 0 {
            return f.write_str("no machine is ready to receive work");
        }
        write!(f, "no machine fits (evaluated {}", self.machines_evaluated)?;
        for (dimension, count) in &self.exhausted {
            write!(f, "; {} exhausted on {count}", dimension.as_str())?;
        }
        f.write_str(")")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub task: Uuid,
    pub reason: NoFit,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub unplaced: Vec<Unplaced>,
}

/// Places `pending` onto the machines of `snapshot`.
pub fn schedule(snapshot: &Snapshot, pending: &[TaskAsk], seed: u64) -> Plan {
    let mut machines = snapshot.machines.clone();
    let mut order: Vec<&TaskAsk> = pending.iter().collect();
    // Highest priority first, then largest first (placing big items early packs better),
    // then by id so that the order never depends on the caller's order.
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(b.resources.memory_bytes.cmp(&a.resources.memory_bytes))
            .then(b.resources.milli_cpu.cmp(&a.resources.milli_cpu))
            .then(a.id.cmp(&b.id))
    });

    let mut plan = Plan::default();
    for task in order {
        let mut best: Option<(Score, usize)> = None;
        let mut no_fit = NoFit { machines_evaluated: machines.len() as u32, ..NoFit::default() };
        for (index, machine) in machines.iter().enumerate() {
            let free = machine.free();
            if !free.fits(&task.resources) {
                let dimension = if task.resources.milli_cpu > free.milli_cpu { Dimension::Cpu } else { Dimension::Memory };
                *no_fit.exhausted.entry(dimension).or_default() += 1;
                continue;
            }
            let score = score(machine, task, seed);
            if best.as_ref().is_none_or(|(best_score, _)| score < *best_score) {
                best = Some((score, index));
            }
        }
        match best {
            Some((_, index)) => {
                let machine = &mut machines[index];
                machine.allocated += task.resources;
                *machine.group_counts.entry(task.group.clone()).or_default() += 1;
                plan.placements.push(Placement { task: task.id, machine: machine.id });
            }
            None => plan.unplaced.push(Unplaced { task: task.id, reason: no_fit }),
        }
    }
    plan
}

/// Lower is better: fewest replicas of the same group first, then the tightest fit, then a
/// seeded pseudo-random tie-break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    same_group: u32,
    leftover_permille: u64,
    tie_break: u64,
}

fn score(machine: &MachineView, task: &TaskAsk, seed: u64) -> Score {
    let free = machine.free();
    let leftover = |free: u64, ask: u64, capacity: u64| (free - ask) * 1000 / capacity.max(1);
    let leftover_permille = leftover(free.milli_cpu, task.resources.milli_cpu, machine.capacity.milli_cpu)
        + leftover(free.memory_bytes, task.resources.memory_bytes, machine.capacity.memory_bytes);
    Score {
        same_group: machine.group_counts.get(&task.group).copied().unwrap_or(0),
        leftover_permille,
        tie_break: mix(seed ^ mix(machine.id.as_u128() as u64)),
    }
}

/// SplitMix64 finaliser: a cheap, well-distributed hash for seeded tie-breaks.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn machine(n: u128, cpu: u64, mem: u64) -> MachineView {
        MachineView { id: Uuid::from_u128(n), capacity: Resources::new(cpu, mem), ..MachineView::default() }
    }

    fn ask(n: u128, group: &str, cpu: u64, mem: u64) -> TaskAsk {
        TaskAsk { id: Uuid::from_u128(1000 + n), group: group.into(), resources: Resources::new(cpu, mem), priority: 0 }
    }

    #[test]
    fn replicas_spread_across_machines() {
        let snapshot = Snapshot { machines: vec![machine(1, 4000, 4096), machine(2, 4000, 4096)] };
        let plan = schedule(&snapshot, &[ask(1, "web", 100, 64), ask(2, "web", 100, 64)], 7);
        assert_eq!(plan.placements.len(), 2);
        assert_ne!(plan.placements[0].machine, plan.placements[1].machine);
    }

    #[test]
    fn best_fit_prefers_the_fullest_machine_that_fits() {
        let mut busy = machine(1, 4000, 4096);
        busy.allocated = Resources::new(3000, 3000);
        let snapshot = Snapshot { machines: vec![busy, machine(2, 4000, 4096)] };
        let plan = schedule(&snapshot, &[ask(1, "a", 500, 500)], 1);
        assert_eq!(plan.placements[0].machine, Uuid::from_u128(1));
    }

    #[test]
    fn unplaced_tasks_carry_the_exhausted_resource() {
        let snapshot = Snapshot { machines: vec![machine(1, 1000, 1 << 30), machine(2, 8000, 1 << 20)] };
        let plan = schedule(&snapshot, &[ask(1, "big", 2000, 1 << 25)], 1);
        assert!(plan.placements.is_empty());
        let reason = &plan.unplaced[0].reason;
        assert_eq!(reason.machines_evaluated, 2);
        assert_eq!(reason.exhausted.get(&Dimension::Cpu), Some(&1));
        assert_eq!(reason.exhausted.get(&Dimension::Memory), Some(&1));
        assert_eq!(reason.to_string(), "no machine fits (evaluated 2; cpu exhausted on 1; memory exhausted on 1)");
    }

    #[test]
    fn an_empty_pool_says_so() {
        let plan = schedule(&Snapshot::default(), &[ask(1, "a", 1, 1)], 1);
        assert_eq!(plan.unplaced[0].reason.to_string(), "no machine is ready to receive work");
    }

    fn arb_input() -> impl Strategy<Value = (Snapshot, Vec<TaskAsk>, u64)> {
        let machines = prop::collection::vec((1u64..8000, 1u64..8192), 0..12);
        let tasks = prop::collection::vec((1u64..3000, 1u64..3000, 0u8..4, -2i32..3), 0..60);
        (machines, tasks, any::<u64>()).prop_map(|(machines, tasks, seed)| {
            let machines = machines
                .into_iter()
                .enumerate()
                .map(|(i, (cpu, mem))| machine(i as u128, cpu, mem))
                .collect();
            let tasks = tasks
                .into_iter()
                .enumerate()
                .map(|(i, (cpu, mem, group, priority))| TaskAsk { priority, ..ask(i as u128, &format!("g{group}"), cpu, mem) })
                .collect();
            (Snapshot { machines }, tasks, seed)
        })
    }

    proptest! {
        #[test]
        fn never_overcommits_and_accounts_for_every_task((snapshot, tasks, seed) in arb_input()) {
            let plan = schedule(&snapshot, &tasks, seed);
            prop_assert_eq!(plan.placements.len() + plan.unplaced.len(), tasks.len());
            for machine in &snapshot.machines {
                let used: Resources = plan.placements.iter()
                    .filter(|p| p.machine == machine.id)
                    .map(|p| tasks.iter().find(|t| t.id == p.task).map(|t| t.resources).unwrap_or_default())
                    .sum();
                prop_assert!(machine.capacity.fits(&used));
            }
            for unplaced in &plan.unplaced {
                prop_assert_eq!(unplaced.reason.machines_evaluated as usize, snapshot.machines.len());
            }
        }

        #[test]
        fn same_input_and_seed_give_the_same_plan((snapshot, tasks, seed) in arb_input()) {
            let mut reversed = tasks.clone();
            reversed.reverse();
            prop_assert_eq!(schedule(&snapshot, &tasks, seed), schedule(&snapshot, &reversed, seed));
        }
    }
}
