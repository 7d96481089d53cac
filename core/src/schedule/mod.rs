//! The scheduler: where every task runs, which machines to buy, which to give back.
//!
//! [`schedule`] is a pure function of its inputs: the same snapshot, pending list and seed give
//! the same plan. It never overcommits a machine, and "does not fit" is an outcome carried in
//! the plan with its reasons, never an error. One pass places pending work on existing machines
//! (cost-aware best fit with spread), buys machines for what is left when the snapshot carries
//! a catalog (the provisioning planner; a task whose share of the machine it would get costs
//! much more than a machine bought for it alone is left to the planner too), and lets what still has no room evict lower-priority
//! preemptible work. [`consolidate`] is the separate, periodic pass that gives machines back;
//! [`explain`] says what a placement would have cost elsewhere; [`plan_evacuation`] previews
//! moving everything off one provider, and [`next_wave`] paces that move. Nothing here does I/O, reads
//! the clock or draws randomness other than from the seed it is given.

mod catalog;
mod cluster;
mod consolidate;
mod cover;
mod evacuate;
mod explain;
mod hashing;
mod model;
mod place;
mod planner;
mod policy;
mod preempt;

pub use catalog::{Catalog, CatalogError, Offering, OwnedRates, gib_micros_to_bytes, parse_micros};
pub use consolidate::{DisruptionBudget, consolidate};
pub use cover::{CoverBound, cover_bound};
pub use evacuate::{
    EvacuationPlan, Relocation, Timing, WaitingMachine, disruption_budget, next_wave, plan_evacuation, waves,
};
pub use explain::{Explanation, ProviderCost, explain};
pub use model::{
    Constraints, Dimension, Drain, Filter, MachineState, MachineView, MicrosPerHour, Move, NoFit, Placement, Plan,
    Preemption, Provision, RunningTask, Snapshot, Spread, TaskAsk, Unplaced, WorkloadKind,
};
pub use policy::{Policy, Quota, SpotPolicy};

use cluster::Cluster;

/// Decides where `pending` runs: placements on existing machines, machines to provision (when
/// `snapshot.catalog` is not empty) with the tasks meant for them, preemptions, and for
/// everything else the reasons it has no room.
pub fn schedule(snapshot: &Snapshot, pending: &[TaskAsk], seed: u64) -> Plan {
    let mut cluster = Cluster::new(&snapshot.machines, seed);
    let ordered = place::order(pending, &snapshot.machines);
    let mut plan = Plan::default();
    let (mut unplaced, deferred) = place::place_all(&mut cluster, &ordered, snapshot, &mut plan);
    unplaced.extend(deferred.iter().map(|&task| (task, NoFit::default())));
    // Buying room comes before evicting anyone: preemption is for work that cannot be bought
    // room for (no catalog, policy, quota).
    let unplaced = planner::provision(snapshot, unplaced, seed, &mut plan.provisions);
    let unplaced = place::place_leftovers(&mut cluster, unplaced, &deferred, &snapshot.policy, &mut plan);
    let unplaced = preempt::preempt(&mut cluster, &snapshot.running, unplaced, &snapshot.policy, &mut plan);
    plan.unplaced = unplaced.into_iter().map(|(task, reason)| Unplaced { task: task.id, reason }).collect();
    plan
}

#[cfg(test)]
mod tests;
