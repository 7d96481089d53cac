//! P4: replay the real Azure VM trace through placement + planner + consolidation with real
//! prices, and compare with two baselines and the offline lower bound.
//!
//! `cargo bench -p canopy-core --bench replay [-- --trace PATH]` (a CSV with the shipped
//! trace's columns; the shipped trace is the default).
//!
//! Model: arrivals every 5 minutes (the trace's resolution) are scheduled onto the machines
//! that exist; machines are bought for what does not fit and take `BOOT_SECONDS` to boot; a
//! machine is given back the moment it runs nothing; every hour a consolidation pass moves
//! work off under-used machines (at most 5 tasks of one group per pass). Billing is per second.
//! Every task is a non-interruptible amd64 VM (the trace does not say which could be spot),
//! placed in a few US regions of AWS and Azure.

mod common;

use canopy_core::Resources;
use canopy_core::schedule::{
    Catalog, DisruptionBudget, MachineView, Policy, Provision, RunningTask, Snapshot, TaskAsk, WorkloadKind,
    consolidate, gib_micros_to_bytes, parse_micros, schedule,
};
use common::{LpCommodity, LpOption, data_path, full_catalog, lp_bound};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

const BOOT_SECONDS: u64 = 90;
const CONSOLIDATE_EVERY: u64 = 3600;
const REGIONS: [&str; 6] = ["us-east-1", "eastus", "eastus2", "centralus", "westus2", "southcentralus"];

struct Vm {
    submit: u64,
    duration: u64,
    size: Resources,
    group: u64,
}

fn read_trace(path: &str) -> Vec<Vm> {
    let text = std::fs::read_to_string(path).expect("trace is readable");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("trace has a header").split(',').collect();
    let at = |name: &str| header.iter().position(|c| *c == name).unwrap_or_else(|| panic!("trace lacks column {name}"));
    let (submit, duration, cpus, memory, group) =
        (at("submit_time_s"), at("duration_s"), at("cpus"), at("memory_gib"), at("group"));
    let number = |s: &str| parse_micros(s).unwrap_or_else(|| panic!("not a number: {s:?}"));
    let mut vms: Vec<Vm> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            Vm {
                submit: number(f[submit]) / 1_000_000,
                duration: (number(f[duration]) / 1_000_000).max(1),
                size: Resources::new(number(f[cpus]) / 1000, gib_micros_to_bytes(number(f[memory]))),
                group: number(f[group]) / 1_000_000,
            }
        })
        .collect();
    vms.sort_by_key(|v| v.submit);
    vms
}

struct Outcome {
    cost: f64,
    cpu_utilization: f64,
    memory_utilization: f64,
    pending_mean: f64,
    pending_p99: u64,
    machines: usize,
    moves: usize,
    unplaced_at_end: usize,
}

struct Machine {
    view: MachineView,
    start: u64,
    tasks: u32,
    /// Allocated cpu-seconds so far, up to `touched`.
    used: f64,
    touched: u64,
}

impl Machine {
    fn touch(&mut self, now: u64) {
        let now = now.max(self.touched);
        self.used += self.view.allocated.milli_cpu as f64 * (now - self.touched) as f64;
        self.touched = now;
    }
}

thread_local! {
    /// Per instance type: cost, allocated cpu-seconds, capacity cpu-seconds, machines.
    static BREAKDOWN: std::cell::RefCell<std::collections::BTreeMap<String, (f64, f64, f64, u64)>> = Default::default();
}

/// The machine a provision stands for, as the next snapshot sees it.
fn bought_machine(p: &Provision) -> MachineView {
    MachineView {
        id: p.id,
        capacity: p.capacity,
        provider: p.provider.clone(),
        region: p.region.clone(),
        zone: p.zone.clone(),
        offering: p.instance_type.clone(),
        price: p.price,
        spot: p.spot,
        ..MachineView::default()
    }
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn simulate(vms: &[Vm], catalog: &Arc<Catalog>, policy: &Policy, consolidation: bool) -> Outcome {
    let ask = |i: usize| TaskAsk {
        id: Uuid::from_u128(i as u128 + 1),
        group: vms[i].group.to_string(),
        resources: vms[i].size,
        kind: WorkloadKind::Batch,
        spread: canopy_core::schedule::Spread { machines: false, ..Default::default() },
        constraints: canopy_core::schedule::Constraints { arch: Some("amd64".into()), ..Default::default() },
        ..TaskAsk::default()
    };
    let asks: Vec<TaskAsk> = (0..vms.len()).map(ask).collect();
    let index_of: HashMap<Uuid, usize> = asks.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
    let mut machines: HashMap<Uuid, Machine> = HashMap::new();
    let mut task_machine: Vec<Option<Uuid>> = vec![None; vms.len()];
    let mut started: Vec<Option<u64>> = vec![None; vms.len()];
    let mut ends: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut pending: Vec<usize> = Vec::new();
    let (mut cost, mut machine_cpu_seconds, mut machine_memory_seconds) = (0.0f64, 0.0f64, 0.0f64);
    let (mut bought, mut moves) = (0usize, 0usize);
    let mut next_arrival = 0;
    let mut step = 0u64;
    let mut last_consolidation = 0;

    let give_back = |m: Machine, at: u64, cost: &mut f64, cpu: &mut f64, memory: &mut f64| {
        let seconds = at.saturating_sub(m.start) as f64;
        let mut m = m;
        m.touch(at);
        BREAKDOWN.with(|b| {
            let mut b = b.borrow_mut();
            let e = b.entry(m.view.offering.clone()).or_default();
            e.0 += m.view.price as f64 * seconds / 3600.0 / 1e6;
            e.1 += m.used;
            e.2 += m.view.capacity.milli_cpu as f64 * seconds;
            e.3 += 1;
        });
        *cost += m.view.price as f64 * seconds / 3600.0;
        *cpu += m.view.capacity.milli_cpu as f64 * seconds;
        *memory += m.view.capacity.memory_bytes as f64 * seconds;
    };

    while next_arrival < vms.len() || !ends.is_empty() || !pending.is_empty() {
        let now = if next_arrival < vms.len() { vms[next_arrival].submit } else { ends.peek().map_or(0, |e| e.0.0) };
        // Departures up to now; a machine that runs nothing is given back when it empties.
        while let Some(&Reverse((end, task))) = ends.peek() {
            if end > now {
                break;
            }
            ends.pop();
            let Some(id) = task_machine[task].take() else { continue };
            if let Some(m) = machines.get_mut(&id) {
                m.touch(end);
                m.view.allocated = m.view.allocated.saturating_sub(&vms[task].size);
                m.tasks -= 1;
                if m.tasks == 0 {
                    let m = machines.remove(&id).expect("machine exists");
                    give_back(m, end, &mut cost, &mut machine_cpu_seconds, &mut machine_memory_seconds);
                }
            }
        }
        while next_arrival < vms.len() && vms[next_arrival].submit == now {
            pending.push(next_arrival);
            next_arrival += 1;
        }
        if !pending.is_empty() {
            step += 1;
            let mut ids: Vec<Uuid> = machines.keys().copied().collect();
            ids.sort_unstable();
            let snapshot = Snapshot {
                machines: ids.iter().map(|id| machines[id].view.clone()).collect(),
                catalog: catalog.clone(),
                policy: policy.clone(),
                ..Snapshot::default()
            };
            let batch: Vec<TaskAsk> = pending.iter().map(|&i| asks[i].clone()).collect();
            let plan = schedule(&snapshot, &batch, mix(step));
            let mut start_task = |task: usize, machine: Uuid, at: u64| {
                task_machine[task] = Some(machine);
                started[task] = Some(at);
                ends.push(Reverse((at + vms[task].duration, task)));
            };
            for p in &plan.placements {
                let task = index_of[&p.task];
                let m = machines.get_mut(&p.machine).expect("placed on a known machine");
                m.touch(now);
                m.view.allocated += vms[task].size;
                m.tasks += 1;
                // Work placed on a machine still booting starts when it is up.
                start_task(task, p.machine, now.max(m.start + BOOT_SECONDS));
            }
            for p in &plan.provisions {
                bought += 1;
                let view = bought_machine(p);
                let mut m = Machine { view, start: now, tasks: 0, used: 0.0, touched: now };
                for id in &p.tasks {
                    let task = index_of[id];
                    m.view.allocated += vms[task].size;
                    m.tasks += 1;
                    start_task(task, p.id, now + BOOT_SECONDS);
                }
                machines.insert(p.id, m);
            }
            pending = plan.unplaced.iter().map(|u| index_of[&u.task]).collect();
        }
        if consolidation && now >= last_consolidation + CONSOLIDATE_EVERY {
            last_consolidation = now;
            let mut ids: Vec<Uuid> = machines.keys().copied().collect();
            ids.sort_unstable();
            let running: Vec<RunningTask> = task_machine
                .iter()
                .enumerate()
                .filter_map(|(task, m)| {
                    m.map(|machine| RunningTask { task: asks[task].clone(), machine, do_not_disrupt: false })
                })
                .collect();
            let snapshot = Snapshot {
                machines: ids.iter().map(|id| machines[id].view.clone()).collect(),
                running,
                catalog: catalog.clone(),
                policy: policy.clone(),
            };
            let budget = DisruptionBudget { max_moves_per_group: 5, ..DisruptionBudget::default() };
            let plan = consolidate(&snapshot, &budget, mix(now));
            for p in &plan.provisions {
                bought += 1;
                let view = bought_machine(p);
                machines.insert(p.id, Machine { view, start: now, tasks: 0, used: 0.0, touched: now });
            }
            for mv in &plan.moves {
                let task = index_of[&mv.task];
                if let Some(from) = machines.get_mut(&mv.from) {
                    from.touch(now);
                    from.view.allocated = from.view.allocated.saturating_sub(&vms[task].size);
                    from.tasks -= 1;
                }
                let to = machines.get_mut(&mv.to).expect("move target exists");
                to.touch(now);
                to.view.allocated += vms[task].size;
                to.tasks += 1;
                task_machine[task] = Some(mv.to);
                moves += 1;
            }
            for drain in &plan.drains {
                if let Some(m) = machines.remove(&drain.machine) {
                    give_back(m, now, &mut cost, &mut machine_cpu_seconds, &mut machine_memory_seconds);
                }
            }
        }
        if next_arrival >= vms.len() && ends.is_empty() {
            break;
        }
    }
    let end = vms.iter().map(|v| v.submit + v.duration).max().unwrap_or(0) + BOOT_SECONDS;
    for (_, m) in machines.drain() {
        give_back(m, end, &mut cost, &mut machine_cpu_seconds, &mut machine_memory_seconds);
    }
    let task_cpu: f64 = vms.iter().map(|v| v.size.milli_cpu as f64 * v.duration as f64).sum();
    let task_memory: f64 = vms.iter().map(|v| v.size.memory_bytes as f64 * v.duration as f64).sum();
    let mut waits: Vec<u64> =
        vms.iter().zip(&started).filter_map(|(v, s)| s.map(|s| s.saturating_sub(v.submit))).collect();
    waits.sort_unstable();
    Outcome {
        cost: cost / 1e6,
        cpu_utilization: task_cpu / machine_cpu_seconds.max(1.0),
        memory_utilization: task_memory / machine_memory_seconds.max(1.0),
        pending_mean: waits.iter().sum::<u64>() as f64 / waits.len().max(1) as f64,
        pending_p99: waits.get(waits.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0),
        machines: bought,
        moves,
        unplaced_at_end: vms.len() - waits.len(),
    }
}

/// The offline lower bound, integrated over the trace in `BOUND_INTERVAL` slices. In each
/// slice: the LP relaxation of buying machines for the work running (each VM size its own
/// commodity, so a VM's cpu and memory come from the same machine type; machines divisible; no
/// boot time), at the slice's time-averaged demand. The LP optimum is convex in the demand, so
/// (Jensen) the bound at the average is at most the average of the bounds: still a lower bound.
fn offline_bound(vms: &[Vm], options: &[(Resources, u64)]) -> f64 {
    const BOUND_INTERVAL: u64 = 1800;
    let mut sorted: Vec<(Resources, u64)> = options.to_vec();
    sorted.sort_by(|a, b| a.1.cmp(&b.1).then(b.0.milli_cpu.cmp(&a.0.milli_cpu)));
    let mut kept: Vec<(Resources, u64)> = Vec::new();
    for o in sorted {
        if !kept.iter().any(|k| k.0.fits(&o.0)) {
            kept.push(o);
        }
    }
    let mut shapes: Vec<Resources> = vms.iter().map(|v| v.size).collect();
    shapes.sort_by_key(|r| (r.milli_cpu, r.memory_bytes));
    shapes.dedup();
    let shape_of = |r: &Resources| {
        shapes.binary_search_by_key(&(r.milli_cpu, r.memory_bytes), |s| (s.milli_cpu, s.memory_bytes)).unwrap_or(0)
    };
    let end = vms.iter().map(|v| v.submit + v.duration).max().unwrap_or(0);
    let slices = (end / BOUND_INTERVAL + 1) as usize;
    // Task-seconds of each shape in each slice.
    let mut load = vec![vec![0.0f64; shapes.len()]; slices];
    for v in vms {
        let s = shape_of(&v.size);
        let (mut t, stop) = (v.submit, v.submit + v.duration);
        while t < stop {
            let slice = (t / BOUND_INTERVAL) as usize;
            let slice_end = ((slice as u64) + 1) * BOUND_INTERVAL;
            let until = stop.min(slice_end);
            load[slice][s] += (until - t) as f64;
            t = until;
        }
    }
    let lp_options: Vec<LpOption> = kept
        .iter()
        .map(|(capacity, price)| LpOption {
            capacity: *capacity,
            price: *price,
            available: None,
            eligible: vec![true; shapes.len()],
        })
        .collect();
    let mut total = 0.0;
    for slice in &load {
        let commodities: Vec<LpCommodity> = shapes
            .iter()
            .zip(slice)
            .map(|(size, seconds)| LpCommodity { size: *size, count: seconds / BOUND_INTERVAL as f64 })
            .collect();
        if commodities.iter().all(|c| c.count == 0.0) {
            continue;
        }
        let options: Vec<LpOption> = lp_options
            .iter()
            .map(|o| LpOption { eligible: commodities.iter().map(|c| c.count > 0.0).collect(), ..o.clone() })
            .collect();
        let commodities: Vec<LpCommodity> = commodities.into_iter().filter(|c| c.count > 0.0).collect();
        let options: Vec<LpOption> =
            options.into_iter().map(|o| LpOption { eligible: vec![true; commodities.len()], ..o }).collect();
        total += lp_bound(&options, &commodities) / 1e6 * BOUND_INTERVAL as f64 / 3600.0;
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trace = args.iter().position(|a| a == "--trace").and_then(|i| args.get(i + 1)).cloned();
    let trace = trace.unwrap_or_else(|| data_path("traces/azure_v1_vms.csv"));
    let vms = read_trace(&trace);
    let catalog = Arc::new(full_catalog());
    let policy = Policy {
        allowed_providers: vec!["aws".into(), "azure".into()],
        allowed_regions: REGIONS.iter().map(|r| r.to_string()).collect(),
        ..Policy::default()
    };
    let allowed: Vec<&canopy_core::schedule::Offering> = catalog
        .offerings
        .iter()
        .filter(|o| policy.allows_provider(&o.provider) && policy.allows_region(&o.region) && o.arch() == "amd64")
        .collect();

    let start = Instant::now();
    let ours = simulate(&vms, &catalog, &policy, true);
    let seconds = start.elapsed().as_secs_f64();
    // Where our money went, by instance type (cost, machines, allocated share of their cpu).
    let breakdown = BREAKDOWN.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let mut rows: Vec<_> = breakdown.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));

    // Baseline 1: every VM alone on the cheapest allowed on-demand offering that fits it,
    // billed like every machine here from the request (so including the boot).
    let one_vm_per_task: f64 = vms
        .iter()
        .map(|v| {
            let price =
                allowed.iter().filter(|o| o.capacity.fits(&v.size)).map(|o| o.price_on_demand).min().unwrap_or(0);
            price as f64 / 1e6 * (v.duration + BOOT_SECONDS) as f64 / 3600.0
        })
        .sum();
    // Baseline 2: the best single provider, bin-packing with the same placer and planner but
    // no consolidation (empty machines are still given back).
    let mut single: Vec<(String, Outcome)> = Vec::new();
    for provider in ["aws", "azure"] {
        let only = Policy { allowed_providers: vec![provider.into()], ..policy.clone() };
        single.push((provider.to_string(), simulate(&vms, &catalog, &only, false)));
    }
    single.sort_by(|a, b| a.1.cost.total_cmp(&b.1.cost));
    let (best_provider, best_single) = &single[0];
    let options: Vec<(Resources, u64)> = allowed.iter().map(|o| (o.capacity, o.price_on_demand)).collect();
    let bound = offline_bound(&vms, &options);

    println!("P4 replay: {} VMs from {trace}", vms.len());
    println!(
        "  regions {REGIONS:?}, boot {BOOT_SECONDS} s, consolidation every {CONSOLIDATE_EVERY} s, release, 1 thread"
    );
    println!(
        "  canopy: ${:.0} in {seconds:.1} s; {} machines bought, {} moves; utilization cpu {:.1}% memory {:.1}%; pending mean {:.0} s p99 {} s; unplaced {}",
        ours.cost,
        ours.machines,
        ours.moves,
        ours.cpu_utilization * 100.0,
        ours.memory_utilization * 100.0,
        ours.pending_mean,
        ours.pending_p99,
        ours.unplaced_at_end
    );
    for (offering, (cost, used, capacity, n)) in rows.iter().take(6) {
        println!("    {offering:<22} ${cost:>6.0}  {n:>6} machines  cpu allocated {:.1}%", 100.0 * used / capacity);
    }
    for (provider, o) in &single {
        println!(
            "  single provider {provider}: ${:.0}; utilization cpu {:.1}% memory {:.1}%; pending mean {:.0} s",
            o.cost,
            o.cpu_utilization * 100.0,
            o.memory_utilization * 100.0,
            o.pending_mean
        );
    }
    println!(
        "  one on-demand VM per task: ${one_vm_per_task:.0} (pending {BOOT_SECONDS} s: each VM boots); offline lower bound: ${bound:.0}"
    );
    println!(
        "bench=replay tasks={} seconds={seconds:.1} cost={:.0} baseline_one_vm_per_task={one_vm_per_task:.0} baseline_best_single_provider={:.0} bound={bound:.0} bound_gap={:.4} utilization={:.3} memory_utilization={:.3} pending_mean_s={:.0} pending_p99_s={} best_single_provider={best_provider}",
        vms.len(),
        ours.cost,
        best_single.cost,
        ours.cost / bound - 1.0,
        ours.cpu_utilization,
        ours.memory_utilization,
        ours.pending_mean,
        ours.pending_p99
    );
}
