//! Placement onto existing machines: the order tasks are considered in, and the greedy pass
//! that puts each on the best machine the index finds.
//!
//! Highest priority first so that scarce room goes to what matters; within a priority, largest
//! first, which is what makes greedy packing good (the small tasks fill the gaps the big ones
//! leave). It never buys, evicts or moves: those are the planner, preemption and consolidation.

use super::cluster::Cluster;
use super::model::{MachineView, NoFit, Placement, Plan, TaskAsk};
use super::policy::Policy;

/// `pending` in placement order: priority, then size relative to the machines here, then id
/// (so the order never depends on the caller's).
pub(crate) fn order<'a>(pending: &'a [TaskAsk], machines: &[MachineView]) -> Vec<&'a TaskAsk> {
    let largest_cpu = machines.iter().map(|m| m.capacity.milli_cpu).max().unwrap_or(0).max(1);
    let largest_memory = machines.iter().map(|m| m.capacity.memory_bytes).max().unwrap_or(0).max(1);
    let size = |task: &TaskAsk| {
        let cpu = task.resources.milli_cpu as u128 * 1_000_000 / largest_cpu as u128;
        let memory = task.resources.memory_bytes as u128 * 1_000_000 / largest_memory as u128;
        cpu.max(memory) + u128::from(task.gpus) * 1_000_000_000
    };
    let mut keyed: Vec<(i32, u128, &TaskAsk)> = pending.iter().map(|t| (t.priority, size(t), t)).collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.id.cmp(&b.2.id)));
    keyed.into_iter().map(|(_, _, task)| task).collect()
}

/// Places each task of `ordered` on the best machine; returns those that fit nowhere.
pub(crate) fn place_all<'a>(
    cluster: &mut Cluster<'a>,
    ordered: &[&'a TaskAsk],
    policy: &Policy,
    plan: &mut Plan,
) -> Vec<(&'a TaskAsk, NoFit)> {
    let mut unplaced = Vec::new();
    for &task in ordered {
        match cluster.find(task, policy.allows_spot(task)) {
            Ok((index, _)) => {
                cluster.assign(index, task);
                plan.placements.push(Placement { task: task.id, machine: cluster.slots[index as usize].view.id });
            }
            Err(reason) => unplaced.push((task, reason)),
        }
    }
    unplaced
}
