//! Evacuation preview: plan moving everything off AWS in a 10,000-machine pool (half AWS,
//! half Azure, each half full), with the full shipped catalogs to buy from, single-threaded.
//! This is what `canopy provider evacuate aws --dry-run` computes, and what starting one
//! computes inside its transaction.
//!
//! `cargo bench -p canopy-core --bench evacuate`

mod common;

use canopy_core::Resources;
use canopy_core::schedule::{
    MachineView, Policy, RunningTask, Snapshot, SpotPolicy, TaskAsk, Timing, WorkloadKind, disruption_budget,
    plan_evacuation,
};
use common::{GIB, Rng, find, full_catalog, median_time};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

const MACHINES: usize = 10_000;
const SEED: u64 = 7;

fn main() {
    let catalog = Arc::new(full_catalog());
    let types =
        [find(&catalog, "aws", "us-east-1", "m5.2xlarge"), find(&catalog, "azure", "eastus", "Standard_D16s_v5")];
    let mut machines: Vec<MachineView> = (0..MACHINES)
        .map(|i| {
            let offering = types[i % types.len()];
            MachineView {
                id: Uuid::from_u128(i as u128 + 1),
                capacity: offering.capacity,
                provider: offering.provider.clone(),
                region: offering.region.clone(),
                zone: format!("{}-{}", offering.region, ["a", "b", "c"][(i / types.len()) % 3]),
                offering: offering.instance_type.clone(),
                price: offering.price_on_demand,
                ..MachineView::default()
            }
        })
        .collect();

    // Each machine gets container-sized tasks, AWS ones until half full and Azure ones until
    // 80% full (so part of the move needs new machines): services in groups of 20 replicas,
    // the rest batch.
    let mut rng = Rng(SEED);
    let cpus = [250u64, 500, 1000, 2000];
    let mut running = Vec::new();
    let mut budgets = BTreeMap::new();
    for machine in machines.iter_mut() {
        let fill_percent = if machine.provider == "aws" { 50 } else { 80 };
        while machine.allocated.milli_cpu * 100 < machine.capacity.milli_cpu * fill_percent {
            let n = running.len();
            let cpu = cpus[rng.below(cpus.len() as u64) as usize];
            let service = rng.below(3) > 0;
            let group = if service { format!("svc{}", (n * 7919) % 2_000) } else { format!("batch{}", n / 50) };
            let task = TaskAsk {
                id: Uuid::from_u128(1_000_000 + n as u128),
                group: group.clone(),
                resources: Resources::new(cpu, cpu * 2 * GIB / 1000),
                kind: if service { WorkloadKind::Service } else { WorkloadKind::Batch },
                ..TaskAsk::default()
            };
            machine.allocated += task.resources;
            *machine.group_counts.entry(group.clone()).or_default() += 1;
            budgets.insert(group, disruption_budget(20, 1, 0, !service));
            running.push(RunningTask { task, machine: machine.id, do_not_disrupt: false });
        }
    }
    let policy = Policy { spot: SpotPolicy { service: true, batch: true }, ..Policy::default() };
    let snapshot = Snapshot { machines, running, catalog: catalog.clone(), policy };
    let aws: HashSet<Uuid> = snapshot.machines.iter().filter(|m| m.provider == "aws").map(|m| m.id).collect();
    let moving = snapshot.running.iter().filter(|r| aws.contains(&r.machine)).count();
    let timing = Timing { typical_boot_seconds: 90, wave_seconds: 12, ..Timing::default() };

    let (seconds, plan) = median_time(5, || plan_evacuation(&snapshot, "aws", &budgets, &timing, SEED));
    assert!(plan.unplaced.is_empty(), "everything finds a place off aws: {} unplaced", plan.unplaced.len());
    assert_eq!(plan.relocations.len(), moving);
    assert!(plan.purchases.iter().all(|p| p.provider != "aws"));
    let onto_existing = plan.relocations.iter().filter(|r| !plan.purchases.iter().any(|p| p.id == r.to)).count();
    println!(
        "evacuate aws: {} machines, {} tasks, {moving} to move ({onto_existing} onto existing Azure machines), \
         {} machines bought, {} waves",
        snapshot.machines.len(),
        snapshot.running.len(),
        plan.purchases.len(),
        plan.waves.len()
    );
    println!(
        "  hourly cost ${:.2} -> ${:.2}; estimated {} s; planned in {seconds:.3} s (median of 5)",
        plan.cost_before as f64 / 1e6,
        plan.cost_after as f64 / 1e6,
        plan.estimated_seconds
    );
    println!(
        "bench=evacuate machines={} tasks={} moving={moving} seconds={seconds:.3} purchases={} waves={} \
         cost_before_per_hour={:.2} cost_after_per_hour={:.2}",
        snapshot.machines.len(),
        snapshot.running.len(),
        plan.purchases.len(),
        plan.waves.len(),
        plan.cost_before as f64 / 1e6,
        plan.cost_after as f64 / 1e6
    );
}
