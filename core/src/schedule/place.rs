//! Placement onto existing machines: the order tasks are considered in, and the greedy pass
//! that puts each on the best machine the index finds.
//!
//! Highest priority first so that scarce room goes to what matters; within a priority, largest
//! first, which is what makes greedy packing good (the small tasks fill the gaps the big ones
//! leave). It never buys, evicts or moves: those are the planner, preemption and consolidation.

use super::cluster::{Cluster, OPEN_WHEN_SHARE_BELOW_PERMILLE};
use super::model::{Constraints, MachineView, NoFit, Placement, Plan, Snapshot, TaskAsk};
use super::planner;
use super::policy::Policy;
use crate::resources::Resources;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

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

/// Places each task of `ordered` on the best machine; returns those that fit nowhere, and
/// those left for the planner because a machine it could buy would carry them for much less
/// than their share of the machine they would get here (see [`defer_to_planner`]).
pub(crate) fn place_all<'a>(
    cluster: &mut Cluster<'a>,
    ordered: &[&'a TaskAsk],
    snapshot: &Snapshot,
    plan: &mut Plan,
) -> (Vec<(&'a TaskAsk, NoFit)>, Vec<&'a TaskAsk>) {
    let policy = &snapshot.policy;
    let mut buying = Buying::new(snapshot);
    let mut unplaced = Vec::new();
    let mut deferred = Vec::new();
    for &task in ordered {
        let spot_ok = policy.allows_spot(task);
        match cluster.find(task, spot_ok) {
            Ok((_, score)) if buying.defers(task, spot_ok, score.marginal) => deferred.push(task),
            Ok((index, _)) => {
                cluster.assign(index, task);
                plan.placements.push(Placement { task: task.id, machine: cluster.slots[index as usize].view.id });
            }
            Err(reason) => unplaced.push((task, reason)),
        }
    }
    (unplaced, deferred)
}

/// Places what the planner did not buy room for after all (quota, policy): as `place_all`, but
/// never deferring. Returns what still fits nowhere.
pub(crate) fn place_leftovers<'a>(
    cluster: &mut Cluster<'a>,
    leftovers: Vec<(&'a TaskAsk, NoFit)>,
    deferred: &[&'a TaskAsk],
    policy: &Policy,
    plan: &mut Plan,
) -> Vec<(&'a TaskAsk, NoFit)> {
    let deferred: HashSet<Uuid> = deferred.iter().map(|t| t.id).collect();
    let mut still = Vec::new();
    for (task, reason) in leftovers {
        if !deferred.contains(&task.id) {
            still.push((task, reason));
            continue;
        }
        match cluster.find(task, policy.allows_spot(task)) {
            Ok((index, _)) => {
                cluster.assign(index, task);
                plan.placements.push(Placement { task: task.id, machine: cluster.slots[index as usize].view.id });
            }
            Err(reason) => still.push((task, reason)),
        }
    }
    still
}

/// Whether buying is so much cheaper than a placement that the task should wait for the
/// planner: its price alone on the cheapest machine the catalog sells is below
/// [`OPEN_WHEN_SHARE_BELOW_PERMILLE`] of its share (by dominant resource) of the machine it
/// would get. A small task in the gap of a large machine priced for large tasks costs that
/// machine's rate while a small machine would carry it for less, and the gap is left for the
/// large tasks the large machine was bought for. Free (owned, zero-priced) room is never passed
/// over, and without a catalog nothing is deferred.
struct Buying<'s> {
    snapshot: &'s Snapshot,
    allowed: Option<Vec<u32>>,
    alone: HashMap<(&'s Constraints, Resources, u32, bool), Option<u64>>,
}

impl<'s> Buying<'s> {
    fn new(snapshot: &'s Snapshot) -> Buying<'s> {
        Buying { snapshot, allowed: None, alone: HashMap::new() }
    }

    fn defers(&mut self, task: &'s TaskAsk, spot_ok: bool, share: u64) -> bool {
        if share == 0 || self.snapshot.catalog.is_empty() {
            return false;
        }
        let snapshot = self.snapshot;
        let allowed = self.allowed.get_or_insert_with(|| planner::allowed_offerings(snapshot));
        let key = (&task.constraints, task.resources, task.gpus, spot_ok);
        let alone =
            *self.alone.entry(key).or_insert_with(|| planner::standalone_price(snapshot, allowed, task, spot_ok));
        alone.is_some_and(|price| {
            u128::from(price) * 1000 < u128::from(share) * u128::from(OPEN_WHEN_SHARE_BELOW_PERMILLE)
        })
    }
}
