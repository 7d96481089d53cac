//! P3: the provisioning planner on 10,000 pending tasks (sizes drawn from the real Azure trace)
//! against the full real catalogs (AWS + Azure, every region), compared with the LP bound.
//!
//! `cargo bench -p canopy-core --bench plan`

mod common;

use canopy_core::Resources;
use canopy_core::schedule::{Snapshot, TaskAsk, WorkloadKind, schedule};
use common::{GIB, LpCommodity, LpOption, Rng, data_path, full_catalog, lp_bound, median_time};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

const PENDING: usize = 10_000;
const SEED: u64 = 7;

/// (cpus, memory) of every VM in the shipped trace, in trace order.
fn trace_sizes() -> Vec<Resources> {
    let text = std::fs::read_to_string(data_path("traces/azure_v1_vms.csv")).expect("shipped trace is readable");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("trace has a header").split(',').collect();
    let at = |name: &str| header.iter().position(|c| *c == name).expect("trace column");
    let (cpus, memory) = (at("cpus"), at("memory_gib"));
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let cpu = canopy_core::schedule::parse_micros(f[cpus]).expect("cpus") / 1000;
            let memory = canopy_core::schedule::gib_micros_to_bytes(
                canopy_core::schedule::parse_micros(f[memory]).expect("memory"),
            );
            Resources::new(cpu, memory)
        })
        .collect()
}

fn main() {
    let catalog = Arc::new(full_catalog());
    let sizes = trace_sizes();
    // Three classes of work: 60% steady batch (on-demand), 30% interruptible batch (spot
    // allowed where a spot price is known), 10% pinned to AWS.
    let mut rng = Rng(SEED);
    let tasks: Vec<TaskAsk> = (0..PENDING)
        .map(|i| {
            let class = rng.weighted(&[60, 30, 10]);
            let mut task = TaskAsk {
                id: Uuid::from_u128(i as u128 + 1),
                group: format!("job{}", i / 50),
                resources: sizes[rng.below(sizes.len() as u64) as usize],
                kind: WorkloadKind::Batch,
                interruptible: class == 1,
                ..TaskAsk::default()
            };
            task.spread.machines = false;
            // Images are built for x86: without this the cheapest cover is mostly arm64.
            task.constraints.arch = Some("amd64".into());
            if class == 2 {
                task.constraints.providers = vec!["aws".into()];
            }
            task
        })
        .collect();
    let snapshot = Snapshot { catalog: catalog.clone(), ..Snapshot::default() };

    let (seconds, plan) = median_time(5, || schedule(&snapshot, &tasks, SEED));
    assert!(plan.unplaced.is_empty(), "every task is provisioned for: {:?}", plan.unplaced.first());
    let cost: u64 = plan.provisions.iter().map(|p| p.price).sum();
    let spot = plan.provisions.iter().filter(|p| p.spot).count();

    // The LP bound. Commodities: (class, size). Options: every (offering, on-demand|spot) with
    // the classes it serves, minus those a no-dearer option serving at least the same classes
    // matches in capacity (which never changes the optimum).
    let class_of = |t: &TaskAsk| {
        if t.interruptible {
            1
        } else if t.constraints.providers.is_empty() {
            0
        } else {
            2
        }
    };
    let mut counts: BTreeMap<(usize, u64, u64), f64> = BTreeMap::new();
    for t in &tasks {
        *counts.entry((class_of(t), t.resources.milli_cpu, t.resources.memory_bytes)).or_default() += 1.0;
    }
    let commodities: Vec<(usize, LpCommodity)> =
        counts.iter().map(|(&(c, cpu, m), &n)| (c, LpCommodity { size: Resources::new(cpu, m), count: n })).collect();
    let mut variants: Vec<(u64, Resources, [bool; 3])> = Vec::new();
    for o in catalog.offerings.iter().filter(|o| o.arch() == "amd64") {
        let aws = o.provider == "aws";
        variants.push((o.price_on_demand, o.capacity, [true, true, aws]));
        if let Some(spot_price) = o.price_spot {
            variants.push((spot_price, o.capacity, [false, true, false]));
        }
    }
    variants.sort_by(|a, b| {
        a.0.cmp(&b.0).then(b.1.milli_cpu.cmp(&a.1.milli_cpu)).then(b.1.memory_bytes.cmp(&a.1.memory_bytes))
    });
    let mut kept: Vec<(u64, Resources, [bool; 3])> = Vec::new();
    for v in variants {
        let covered = kept.iter().any(|k| k.1.fits(&v.1) && (0..3).all(|c| k.2[c] || !v.2[c]));
        if !covered {
            kept.push(v);
        }
    }
    let options: Vec<LpOption> = kept
        .iter()
        .map(|(price, capacity, serves)| LpOption {
            capacity: *capacity,
            price: *price,
            available: None,
            eligible: commodities.iter().map(|(c, _)| serves[*c]).collect(),
        })
        .collect();
    let commodities: Vec<LpCommodity> = commodities.into_iter().map(|(_, c)| c).collect();
    let lp = lp_bound(&options, &commodities);

    let demand: Resources = tasks.iter().map(|t| t.resources).sum();
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for p in &plan.provisions {
        *by_type
            .entry(format!("{} {} {}{}", p.provider, p.region, p.instance_type, if p.spot { " (spot)" } else { "" }))
            .or_default() += 1;
    }
    println!(
        "P3 plan: {PENDING} pending tasks (real trace sizes), {} offerings (full AWS + Azure catalogs), release, 1 thread",
        catalog.offerings.len()
    );
    println!(
        "  median of 5 runs: {seconds:.3} s; {} machines ({spot} spot) for {:.0} cores / {:.0} GiB",
        plan.provisions.len(),
        demand.milli_cpu as f64 / 1000.0,
        demand.memory_bytes as f64 / GIB as f64
    );
    let mut top: Vec<(&String, &usize)> = by_type.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    for (name, n) in top.iter().take(6) {
        println!("    {n:>5} x {name}");
    }
    println!(
        "  cost ${:.2}/h; LP bound ${:.2}/h over {} non-dominated options",
        cost as f64 / 1e6,
        lp / 1e6,
        options.len()
    );
    println!(
        "bench=plan pending={PENDING} offerings={} seconds={seconds:.3} cost_per_hour={:.2} lp_bound_per_hour={:.2} bound_gap={:.4} machines={}",
        catalog.offerings.len(),
        cost as f64 / 1e6,
        lp / 1e6,
        cost as f64 / lp - 1.0,
        plan.provisions.len()
    );
}
