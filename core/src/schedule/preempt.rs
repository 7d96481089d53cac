//! Preemption: when a task fits nowhere and cannot be bought room for, it may evict running
//! tasks of strictly lower priority that are marked preemptible, never the reverse.
//!
//! For each such task it picks the machine needing the fewest evictions (then the lowest
//! priorities evicted, then the least work lost). Evicted tasks are reported, not re-placed:
//! the control service stops them and they come back as pending work in the next pass.

use super::cluster::Cluster;
use super::model::{NoFit, Placement, Plan, Preemption, RunningTask, TaskAsk};
use super::policy::Policy;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Evictions, highest priority evicted, memory lost, machine index: lower is better.
type VictimCost = (usize, i32, u64, u64);

pub(crate) fn preempt<'a>(
    cluster: &mut Cluster<'a>,
    running: &'a [RunningTask],
    unplaced: Vec<(&'a TaskAsk, NoFit)>,
    policy: &Policy,
    plan: &mut Plan,
) -> Vec<(&'a TaskAsk, NoFit)> {
    if running.is_empty() || unplaced.is_empty() {
        return unplaced;
    }
    let index_of: HashMap<Uuid, u32> =
        cluster.slots.iter().enumerate().map(|(i, slot)| (slot.view.id, i as u32)).collect();
    // Victims per machine, cheapest to lose first: lowest priority, then largest (fewer
    // evictions), then id for determinism.
    let mut victims: HashMap<u32, Vec<&'a RunningTask>> = HashMap::new();
    for running_task in running.iter().filter(|r| r.task.preemptible) {
        if let Some(&index) = index_of.get(&running_task.machine) {
            victims.entry(index).or_default().push(running_task);
        }
    }
    for list in victims.values_mut() {
        list.sort_by(|a, b| {
            a.task
                .priority
                .cmp(&b.task.priority)
                .then(b.task.resources.memory_bytes.cmp(&a.task.resources.memory_bytes))
                .then(a.task.id.cmp(&b.task.id))
        });
    }
    let mut machines: Vec<u32> = victims.keys().copied().collect();
    machines.sort_unstable();
    let mut evicted: HashSet<Uuid> = HashSet::new();
    let mut still_unplaced = Vec::new();

    for (task, reason) in unplaced {
        let spot_ok = policy.allows_spot(task);
        // (evictions, highest priority evicted, memory lost, tie-break) -> machine, victims
        let mut best: Option<(VictimCost, u32, Vec<&'a RunningTask>)> = None;
        for &index in &machines {
            let chosen = evictions_needed(cluster, index, task, spot_ok, &victims[&index], &evicted);
            if let Some(chosen) = chosen {
                let key = (
                    chosen.len(),
                    chosen.iter().map(|v| v.task.priority).max().unwrap_or(i32::MIN),
                    chosen.iter().map(|v| v.task.resources.memory_bytes).sum::<u64>(),
                    index as u64,
                );
                if best.as_ref().is_none_or(|(b, _, _)| key < *b) {
                    best = Some((key, index, chosen));
                }
            }
        }
        match best {
            Some((_, index, chosen)) => {
                for victim in chosen {
                    cluster.release(index, &victim.task);
                    evicted.insert(victim.task.id);
                    plan.preemptions.push(Preemption {
                        task: victim.task.id,
                        machine: victim.machine,
                        for_task: task.id,
                    });
                }
                cluster.assign(index, task);
                plan.placements.push(Placement { task: task.id, machine: cluster.slots[index as usize].view.id });
            }
            None => still_unplaced.push((task, reason)),
        }
    }
    still_unplaced
}

/// The fewest victims on machine `index` whose eviction lets `task` fit, or `None`.
fn evictions_needed<'a>(
    cluster: &mut Cluster<'a>,
    index: u32,
    task: &'a TaskAsk,
    spot_ok: bool,
    candidates: &[&'a RunningTask],
    evicted: &HashSet<Uuid>,
) -> Option<Vec<&'a RunningTask>> {
    let lower: Vec<&'a RunningTask> = candidates
        .iter()
        .copied()
        .filter(|v| v.task.priority < task.priority && !evicted.contains(&v.task.id))
        .collect();
    if lower.is_empty() {
        return None;
    }
    // Try evicting nothing, then the first victim, the first two, ...; stop at the first fit.
    // Released resources are put back before returning, so the cluster is unchanged.
    let mut chosen = Vec::new();
    let mut result = None;
    loop {
        if cluster.fits(index, task, spot_ok) {
            result = Some(chosen.clone());
            break;
        }
        match lower.get(chosen.len()) {
            Some(&victim) => {
                cluster.release(index, &victim.task);
                chosen.push(victim);
            }
            None => break,
        }
    }
    for victim in &chosen {
        cluster.assign(index, &victim.task);
    }
    result.filter(|chosen| !chosen.is_empty())
}
