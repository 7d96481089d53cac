//! Consolidation: which machines to give back because their tasks fit elsewhere, or to
//! replace by a cheaper offering, within a disruption budget.
//!
//! Machines are tried emptiest first (the cheapest to vacate per dollar saved). A machine is
//! drained only if every one of its tasks can move onto a machine that is already busy (so the
//! move adds nothing to the bill) or, failing that, onto one cheaper new machine; owned
//! machines, `do_not_disrupt` machines and machines running `do_not_disrupt` tasks stay. So a
//! consolidation plan never raises the hourly cost. It uses the same feasibility rule as
//! placement. It deliberately does not place pending work or evict by priority.

use super::cluster::{Cluster, mix};
use super::model::{Drain, MachineState, Move, Plan, Provision, RunningTask, Snapshot, TaskAsk};
use crate::resources::Resources;
use std::collections::HashMap;
use uuid::Uuid;

/// How much disruption one consolidation pass may cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DisruptionBudget {
    /// At most this many tasks of one group (app) move in one pass.
    pub max_moves_per_group: u32,
    /// At most this many machines drained in one pass.
    pub max_drains: u32,
    /// Only machines at most this full (dominant resource, per mille) are considered: fuller
    /// ones rarely empty, and trying them costs time.
    pub max_utilization_permille: u32,
}

impl Default for DisruptionBudget {
    fn default() -> Self {
        DisruptionBudget { max_moves_per_group: 1, max_drains: u32::MAX, max_utilization_permille: 600 }
    }
}

pub fn consolidate(snapshot: &Snapshot, budget: &DisruptionBudget, seed: u64) -> Plan {
    let mut plan = Plan::default();
    let mut cluster = Cluster::new(&snapshot.machines, seed);
    let mut tasks_on: HashMap<Uuid, Vec<&RunningTask>> = HashMap::new();
    for running in &snapshot.running {
        tasks_on.entry(running.machine).or_default().push(running);
    }
    let mut candidates: Vec<(u64, u64, u32)> = snapshot
        .machines
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.sunk && m.price > 0 && !m.do_not_disrupt && m.state != MachineState::Draining)
        .filter(|(_, m)| utilization(&m.allocated, &m.capacity) <= u64::from(budget.max_utilization_permille))
        .filter(|(_, m)| tasks_on.get(&m.id).is_none_or(|tasks| tasks.iter().all(|t| !t.do_not_disrupt)))
        .map(|(i, m)| (utilization(&m.allocated, &m.capacity), u64::MAX - m.price, i as u32))
        .collect();
    candidates.sort_unstable();
    let mut moved: HashMap<&str, u32> = HashMap::new();
    let mut drains = 0;

    for (_, _, index) in candidates {
        if drains >= budget.max_drains {
            break;
        }
        let machine = &snapshot.machines[index as usize];
        let mut tasks: Vec<&RunningTask> = tasks_on.get(&machine.id).cloned().unwrap_or_default();
        tasks.sort_by(|a, b| {
            b.task.resources.memory_bytes.cmp(&a.task.resources.memory_bytes).then(a.task.id.cmp(&b.task.id))
        });
        let mut per_group: HashMap<&str, u32> = HashMap::new();
        for t in &tasks {
            *per_group.entry(t.task.group.as_str()).or_default() += 1;
        }
        if per_group.iter().any(|(g, n)| moved.get(g).copied().unwrap_or(0) + n > budget.max_moves_per_group) {
            continue;
        }
        cluster.close(index);
        let mut targets: Vec<(u32, &TaskAsk)> = Vec::new();
        let mut all_fit = true;
        for running in &tasks {
            match cluster.find_busy_first(&running.task, snapshot.policy.allows_spot(&running.task)) {
                Ok((target, score)) if !score.opens => {
                    cluster.assign(target, &running.task);
                    targets.push((target, &running.task));
                }
                _ => {
                    all_fit = false;
                    break;
                }
            }
        }
        if all_fit {
            for (running, (target, _)) in tasks.iter().zip(&targets) {
                let to = cluster.slots[*target as usize].view.id;
                plan.moves.push(Move { task: running.task.id, from: machine.id, to });
            }
            plan.drains.push(Drain { machine: machine.id, saving: machine.price });
        } else {
            for (target, task) in targets {
                cluster.release(target, task);
            }
            match cheaper_replacement(snapshot, machine.price, &tasks, seed, plan.provisions.len() as u64) {
                Some(provision) => {
                    for running in &tasks {
                        plan.moves.push(Move { task: running.task.id, from: machine.id, to: provision.id });
                    }
                    plan.drains.push(Drain { machine: machine.id, saving: machine.price - provision.price });
                    plan.provisions.push(provision);
                }
                None => {
                    cluster.open(index);
                    continue;
                }
            }
        }
        drains += 1;
        for (group, n) in per_group {
            *moved.entry(group).or_default() += n;
        }
    }
    plan
}

/// The dominant resource's share, per mille.
fn utilization(allocated: &Resources, capacity: &Resources) -> u64 {
    let share = |a: u64, c: u64| a.saturating_mul(1000).checked_div(c).unwrap_or(0);
    share(allocated.milli_cpu, capacity.milli_cpu).max(share(allocated.memory_bytes, capacity.memory_bytes))
}

/// The cheapest single machine all of `tasks` accept that costs strictly less than `price`.
fn cheaper_replacement(
    snapshot: &Snapshot,
    price: u64,
    tasks: &[&RunningTask],
    seed: u64,
    counter: u64,
) -> Option<Provision> {
    if tasks.is_empty() {
        return None;
    }
    let need: Resources = tasks.iter().map(|t| t.task.resources).sum();
    let gpus: u32 = tasks.iter().map(|t| t.task.gpus).sum();
    let spot_ok = tasks.iter().all(|t| snapshot.policy.allows_spot(&t.task));
    let spread_ok = tasks.iter().all(|t| {
        let limit = t.task.spread.max_per_machine;
        limit == 0 || tasks.iter().filter(|o| o.task.group == t.task.group).count() as u32 <= limit
    });
    if !spread_ok {
        return None;
    }
    let policy = &snapshot.policy;
    let mut best: Option<(u64, usize, bool)> = None;
    for (index, offering) in snapshot.catalog.offerings.iter().enumerate() {
        if offering.sunk || !offering.capacity.fits(&need) || offering.gpus < gpus {
            continue;
        }
        if !policy.allows_provider(&offering.provider) || !policy.allows_region(&offering.region) {
            continue;
        }
        let view = super::model::MachineView {
            provider: offering.provider.clone(),
            region: offering.region.clone(),
            zone: offering.zones.first().cloned().unwrap_or_default(),
            arch: offering.arch.clone(),
            labels: offering.labels.clone(),
            ..Default::default()
        };
        if tasks.iter().any(|t| super::cluster::rejects(&view, &t.task, spot_ok).is_some()) {
            continue;
        }
        let mut options = vec![(offering.price_on_demand, false)];
        if spot_ok {
            options.extend(offering.price_spot.map(|p| (p, true)));
        }
        for (option_price, spot) in options {
            if option_price < price && best.is_none_or(|(p, _, _)| option_price < p) {
                best = Some((option_price, index, spot));
            }
        }
    }
    let (option_price, index, spot) = best?;
    let offering = &snapshot.catalog.offerings[index];
    Some(Provision {
        id: Uuid::from_u64_pair(mix(seed ^ 0xc0_5011 ^ counter), mix(seed.rotate_left(21) ^ counter)),
        provider: offering.provider.clone(),
        region: offering.region.clone(),
        zone: offering.zones.first().cloned().unwrap_or_default(),
        instance_type: offering.instance_type.clone(),
        capacity: offering.capacity,
        spot,
        price: option_price,
        sunk: false,
        tasks: tasks.iter().map(|t| t.task.id).collect(),
    })
}
