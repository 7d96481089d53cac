//! P1/P2: place 100,000 mixed tasks onto 10,000 machines from scratch, single-threaded, and
//! compare the cost of the machines used against lower bounds.
//!
//! `cargo bench -p canopy-core --bench schedule`

mod common;

use canopy_core::Resources;
use canopy_core::schedule::{MachineView, Spread, TaskAsk, WorkloadKind, cover_bound, schedule};
use common::{GIB, LpCommodity, LpOption, Rng, find, full_catalog, lp_bound, median_time};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

const MACHINES: usize = 10_000;
const TASKS: usize = 100_000;
const SEED: u64 = 42;

fn main() {
    let catalog = full_catalog();
    // Four real general-purpose types with real prices, 2,500 machines of each, in 3 zones.
    let types = [
        find(&catalog, "aws", "us-east-1", "c5.2xlarge"),
        find(&catalog, "aws", "us-east-1", "m5.2xlarge"),
        find(&catalog, "aws", "us-east-1", "r5.2xlarge"),
        find(&catalog, "azure", "eastus", "Standard_D16s_v5"),
    ];
    let machines: Vec<MachineView> = (0..MACHINES)
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

    // Container-sized tasks: cpu by weight, memory per core by weight; a fifth are service
    // replicas (groups of 10, spread over machines), the rest batch; three priorities.
    let mut rng = Rng(SEED);
    let cpus = [250u64, 500, 1000, 2000, 4000];
    let cpu_weights = [30u64, 30, 25, 12, 3];
    let gib_per_core = [1u64, 2, 4, 8];
    let ratio_weights = [20u64, 35, 30, 15];
    let tasks: Vec<TaskAsk> = (0..TASKS)
        .map(|i| {
            let cpu = cpus[rng.weighted(&cpu_weights)];
            let memory = cpu * gib_per_core[rng.weighted(&ratio_weights)] * GIB / 1000;
            let service = rng.below(5) == 0;
            TaskAsk {
                id: Uuid::from_u128(1_000_000 + i as u128),
                group: if service { format!("svc{}", i / 10) } else { format!("batch{}", i / 100) },
                resources: Resources::new(cpu, memory),
                priority: rng.below(3) as i32,
                kind: if service { WorkloadKind::Service } else { WorkloadKind::Batch },
                spread: Spread { machines: service, ..Spread::default() },
                ..TaskAsk::default()
            }
        })
        .collect();
    let snapshot = canopy_core::schedule::Snapshot { machines, ..Default::default() };

    let (seconds, plan) = median_time(5, || schedule(&snapshot, &tasks, SEED));

    // Check the plan: nothing overcommitted; cost of the machines that got work.
    let size: HashMap<Uuid, Resources> = tasks.iter().map(|t| (t.id, t.resources)).collect();
    let mut used: BTreeMap<Uuid, Resources> = BTreeMap::new();
    for placement in &plan.placements {
        *used.entry(placement.machine).or_default() += size[&placement.task];
    }
    let by_id: HashMap<Uuid, &MachineView> = snapshot.machines.iter().map(|m| (m.id, m)).collect();
    let overcommitted = used.iter().filter(|(id, r)| !by_id[*id].capacity.fits(r)).count();
    assert_eq!(overcommitted, 0, "a machine is overcommitted");
    let cost: u64 = used.keys().map(|id| by_id[id].price).sum();
    let demand: Resources = tasks.iter().map(|t| t.resources).sum();

    // Bounds: machines needed by sum of demand; the LP relaxation over the machines on offer
    // (at most 2,500 of each type); and the same without the availability limit.
    let largest_cpu = types.iter().map(|t| t.capacity.milli_cpu).max().unwrap_or(1);
    let largest_memory = types.iter().map(|t| t.capacity.memory_bytes).max().unwrap_or(1);
    let machine_bound = demand.milli_cpu.div_ceil(largest_cpu).max(demand.memory_bytes.div_ceil(largest_memory));
    let mut sizes: BTreeMap<(u64, u64), f64> = BTreeMap::new();
    for t in &tasks {
        *sizes.entry((t.resources.milli_cpu, t.resources.memory_bytes)).or_default() += 1.0;
    }
    let commodities: Vec<LpCommodity> =
        sizes.iter().map(|(&(c, m), &n)| LpCommodity { size: Resources::new(c, m), count: n }).collect();
    let options: Vec<LpOption> = types
        .iter()
        .map(|t| LpOption {
            capacity: t.capacity,
            price: t.price_on_demand,
            available: Some((MACHINES / types.len()) as f64),
            eligible: vec![true; commodities.len()],
        })
        .collect();
    let lp = lp_bound(&options, &commodities);
    let cover = cover_bound(&types.iter().map(|t| (t.capacity, t.price_on_demand)).collect::<Vec<_>>(), demand)
        .map_or(0.0, |b| b.cost);

    let placed = plan.placements.len();
    for t in &types {
        let of_type: Vec<(&Uuid, &Resources)> =
            used.iter().filter(|(id, _)| by_id[*id].offering == t.instance_type).collect();
        let cpu: u64 = of_type.iter().map(|(_, r)| r.milli_cpu).sum();
        let memory: u64 = of_type.iter().map(|(_, r)| r.memory_bytes).sum();
        let n = of_type.len().max(1) as f64;
        println!(
            "  {:<18} used {:>5}  cpu {:>5.1}%  memory {:>5.1}%",
            t.instance_type,
            of_type.len(),
            100.0 * cpu as f64 / (n * t.capacity.milli_cpu as f64),
            100.0 * memory as f64 / (n * t.capacity.memory_bytes as f64)
        );
    }
    println!("P1/P2 schedule: {TASKS} tasks onto {MACHINES} machines (4 real types, 3 zones), release, 1 thread");
    println!(
        "  median of 5 runs: {seconds:.3} s ({:.0} placements/s), placed {placed}, unplaced {}",
        placed as f64 / seconds,
        plan.unplaced.len()
    );
    println!(
        "  demand {:.0} cores / {:.0} GiB; machines used {} (sum-of-demand bound {machine_bound})",
        demand.milli_cpu as f64 / 1000.0,
        demand.memory_bytes as f64 / GIB as f64,
        used.len()
    );
    println!(
        "  cost of machines used ${:.2}/h; LP bound ${:.2}/h; fractional cover bound ${:.2}/h",
        cost as f64 / 1e6,
        lp / 1e6,
        cover / 1e6
    );
    println!(
        "bench=schedule tasks={TASKS} machines={MACHINES} seconds={seconds:.3} placements_per_s={:.0} bound_gap={:.4} placed={placed} machines_used={} machine_bound={machine_bound} cost_per_hour={:.2} lp_bound_per_hour={:.2}",
        placed as f64 / seconds,
        cost as f64 / lp - 1.0,
        used.len(),
        cost as f64 / 1e6,
        lp / 1e6
    );
}
