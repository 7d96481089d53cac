//! Table tests on small fixtures and property tests for the scheduler's invariants.

use super::*;
use crate::resources::Resources;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

const GIB: u64 = 1 << 30;

fn machine(n: u128, cpu: u64, mem: u64) -> MachineView {
    MachineView { id: Uuid::from_u128(n), capacity: Resources::new(cpu, mem), ..MachineView::default() }
}

fn priced(n: u128, provider: &str, cpu: u64, mem: u64, price: u64) -> MachineView {
    MachineView { provider: provider.into(), price, ..machine(n, cpu, mem) }
}

fn ask(n: u128, group: &str, cpu: u64, mem: u64) -> TaskAsk {
    TaskAsk {
        id: Uuid::from_u128(1000 + n),
        group: group.into(),
        resources: Resources::new(cpu, mem),
        ..TaskAsk::default()
    }
}

fn offering(provider: &str, name: &str, cores: u64, gib: u64, price: u64, spot: Option<u64>) -> Offering {
    Offering {
        provider: provider.into(),
        region: "r1".into(),
        instance_type: name.into(),
        capacity: Resources::new(cores * 1000, gib * GIB),
        price_on_demand: price,
        price_spot: spot,
        ..Offering::default()
    }
}

fn catalog(offerings: Vec<Offering>) -> Arc<Catalog> {
    Arc::new(Catalog { offerings })
}

#[test]
fn replicas_spread_across_machines() {
    let snapshot = Snapshot { machines: vec![machine(1, 4000, 4096), machine(2, 4000, 4096)], ..Snapshot::default() };
    let plan = schedule(&snapshot, &[ask(1, "web", 100, 64), ask(2, "web", 100, 64)], 7);
    assert_eq!(plan.placements.len(), 2);
    assert_ne!(plan.placements[0].machine, plan.placements[1].machine);
}

#[test]
fn best_fit_prefers_the_fullest_machine_that_fits() {
    let mut busy = machine(1, 4000, 4096);
    busy.allocated = Resources::new(3000, 3000);
    let snapshot = Snapshot { machines: vec![busy, machine(2, 4000, 4096)], ..Snapshot::default() };
    let plan = schedule(&snapshot, &[ask(1, "a", 500, 500)], 1);
    assert_eq!(plan.placements[0].machine, Uuid::from_u128(1));
}

#[test]
fn an_idle_paid_machine_opens_when_no_busy_one_fits_and_work_goes_where_its_share_is_cheapest() {
    let mut busy = priced(1, "aws", 4000, 8 * GIB, 200_000);
    busy.allocated = Resources::new(3500, 7 * GIB);
    let dear = priced(2, "aws", 4000, 8 * GIB, 190_000);
    let cheap = priced(3, "azure", 4000, 8 * GIB, 150_000);
    let snapshot = Snapshot { machines: vec![busy, dear, cheap], ..Snapshot::default() };
    let small = TaskAsk { spread: Spread { machines: false, ..Spread::default() }, ..ask(1, "a", 500, GIB) };
    let big = TaskAsk { spread: Spread { machines: false, ..Spread::default() }, ..ask(2, "a", 2000, GIB) };
    let plan = schedule(&snapshot, &[small, big], 1);
    let on = |task: u128| plan.placements.iter().find(|p| p.task == Uuid::from_u128(1000 + task)).map(|p| p.machine);
    // Largest first: the big task fits no busy machine and opens the cheapest idle one; the
    // small one then joins it (a busy machine, and a cheaper rate than machine 1).
    assert_eq!(on(2), Some(Uuid::from_u128(3)), "the big one opens the cheapest idle machine");
    assert_eq!(on(1), Some(Uuid::from_u128(3)), "the small one goes where its share is cheapest");
    // Machine 2's share is only 5% cheaper than the busy machine's: not worth opening.
    let without_cheap = Snapshot { machines: snapshot.machines[..2].to_vec(), ..Snapshot::default() };
    let alone = schedule(&without_cheap, &[small_only()], 1);
    assert_eq!(alone.placements[0].machine, Uuid::from_u128(1), "a busy machine beats a similar idle one");
}

#[test]
fn a_much_better_shaped_idle_machine_opens_before_a_busy_one_is_filled_lopsidedly() {
    // A memory-rich machine with work (2 cores, 30 GiB free) and an idle cpu-rich one: a
    // cpu-only task costs 0.25 of the memory-rich machine's price by its dominant resource,
    // and half as much on the cpu-rich one, so it opens that one instead of stranding memory.
    let mut memory_rich = priced(1, "aws", 4000, 32 * GIB, 200_000);
    memory_rich.allocated = Resources::new(2000, 2 * GIB);
    let cpu_rich = priced(2, "aws", 4000, 8 * GIB, 100_000);
    let snapshot = Snapshot { machines: vec![memory_rich, cpu_rich], ..Snapshot::default() };
    let task = TaskAsk { spread: Spread { machines: false, ..Spread::default() }, ..ask(1, "a", 1000, GIB / 2) };
    let plan = schedule(&snapshot, &[task], 1);
    assert_eq!(plan.placements[0].machine, Uuid::from_u128(2));
}

fn small_only() -> TaskAsk {
    TaskAsk { spread: Spread { machines: false, ..Spread::default() }, ..ask(1, "a", 500, GIB) }
}

#[test]
fn unplaced_tasks_carry_the_exhausted_resource() {
    let snapshot =
        Snapshot { machines: vec![machine(1, 1000, 1 << 30), machine(2, 8000, 1 << 20)], ..Snapshot::default() };
    let plan = schedule(&snapshot, &[ask(1, "big", 2000, 1 << 25)], 1);
    assert!(plan.placements.is_empty());
    let reason = &plan.unplaced[0].reason;
    assert_eq!(reason.machines_evaluated, 2);
    assert_eq!(reason.exhausted.get(&Dimension::Cpu), Some(&1));
    assert_eq!(reason.exhausted.get(&Dimension::Memory), Some(&1));
    assert_eq!(reason.to_string(), "no machine fits (evaluated 2; cpu exhausted on 1; memory exhausted on 1)");
}

#[test]
fn constraints_filter_and_are_named_in_the_reason() {
    let mut gpu_box = priced(1, "aws", 8000, 8 * GIB, 1);
    gpu_box.labels.insert("disk".into(), "ssd".into());
    let snapshot = Snapshot {
        machines: vec![
            gpu_box,
            priced(2, "azure", 8000, 8 * GIB, 1),
            MachineView { spot: true, ..priced(3, "aws", 8000, 8 * GIB, 1) },
        ],
        ..Snapshot::default()
    };
    let mut task = ask(1, "db", 1000, GIB);
    task.constraints.providers = vec!["aws".into()];
    task.constraints.labels = BTreeMap::from([("disk".to_string(), "nvme".to_string())]);
    let plan = schedule(&snapshot, &[task], 1);
    let reason = &plan.unplaced[0].reason;
    assert_eq!(reason.filtered.get(&Filter::Provider), Some(&1));
    assert_eq!(reason.filtered.get(&Filter::Label), Some(&2));
    assert_eq!(reason.to_string(), "no machine fits (evaluated 3; provider filtered 1; label filtered 2)");
}

#[test]
fn non_interruptible_work_never_lands_on_spot() {
    let snapshot =
        Snapshot { machines: vec![MachineView { spot: true, ..machine(1, 4000, 4 * GIB) }], ..Snapshot::default() };
    let steady = ask(1, "a", 100, 100);
    let batch = TaskAsk { kind: WorkloadKind::Batch, interruptible: true, ..ask(2, "b", 100, 100) };
    let plan = schedule(&snapshot, &[steady, batch], 1);
    assert_eq!(plan.placements.len(), 1);
    assert_eq!(plan.placements[0].task, Uuid::from_u128(1002));
    assert_eq!(plan.unplaced[0].reason.filtered.get(&Filter::Spot), Some(&1));
}

#[test]
fn a_small_task_is_bought_its_own_machine_rather_than_filling_a_gap_priced_for_big_ones() {
    // A busy 32-core machine at $1.60/h with room: a 1-core task's share there is $0.05/h, while
    // the catalog sells a 1-core machine for $0.02/h. With the catalog it is bought one; without
    // (or when nothing can be bought) it takes the gap.
    let mut big = priced(1, "aws", 32_000, 64 * GIB, 1_600_000);
    big.allocated = Resources::new(16_000, 32 * GIB);
    let small = TaskAsk { spread: Spread { machines: false, ..Spread::default() }, ..ask(1, "a", 1000, GIB) };
    let with_catalog = Snapshot {
        machines: vec![big.clone()],
        catalog: catalog(vec![offering("aws", "tiny", 1, 2, 20_000, None)]),
        ..Snapshot::default()
    };
    let plan = schedule(&with_catalog, std::slice::from_ref(&small), 1);
    assert!(plan.placements.is_empty());
    assert_eq!(plan.provisions.len(), 1);
    assert_eq!(plan.provisions[0].instance_type, "tiny");
    let nothing_allowed = Snapshot {
        policy: Policy { allowed_providers: vec!["azure".into()], ..Policy::default() },
        ..with_catalog.clone()
    };
    let plan = schedule(&nothing_allowed, std::slice::from_ref(&small), 1);
    assert_eq!(plan.placements.len(), 1, "nothing can be bought: the gap is used after all");
    let plan = schedule(&Snapshot { machines: vec![big], ..Snapshot::default() }, &[small], 1);
    assert_eq!(plan.placements.len(), 1);
}

#[test]
fn an_empty_pool_says_so() {
    let plan = schedule(&Snapshot::default(), &[ask(1, "a", 1, 1)], 1);
    assert_eq!(plan.unplaced[0].reason.to_string(), "no machine is ready to receive work");
}

#[test]
fn the_planner_buys_the_cheapest_cover_and_spot_only_for_interruptible_work() {
    let snapshot = Snapshot {
        catalog: catalog(vec![
            offering("aws", "small", 2, 4, 100_000, Some(30_000)),
            offering("aws", "large", 8, 16, 400_000, Some(120_000)),
            offering("azure", "medium", 4, 8, 180_000, None),
        ]),
        ..Snapshot::default()
    };
    let mut tasks: Vec<TaskAsk> =
        (0..8).map(|i| TaskAsk { kind: WorkloadKind::Batch, ..ask(i, "steady", 1000, 2 * GIB) }).collect();
    tasks.push(TaskAsk { kind: WorkloadKind::Batch, interruptible: true, ..ask(9, "flex", 2000, 4 * GIB) });
    let plan = schedule(&snapshot, &tasks, 3);
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    let azure: Vec<&Provision> = plan.provisions.iter().filter(|p| p.provider == "azure").collect();
    assert_eq!(azure.len(), 2, "4-core azure at 0.18 beats 2x aws small: {:#?}", plan.provisions);
    let spot: Vec<&Provision> = plan.provisions.iter().filter(|p| p.spot).collect();
    assert_eq!(spot.len(), 1);
    assert_eq!(spot[0].tasks, vec![Uuid::from_u128(1009)]);
    let cost: u64 = plan.provisions.iter().map(|p| p.price).sum();
    assert_eq!(cost, 2 * 180_000 + 30_000);
}

#[test]
fn owned_capacity_fills_first_within_its_quota() {
    let metal = Offering { sunk: true, ..offering("baremetal", "r740", 4, 8, 250_000, None) };
    let mut policy = Policy::default();
    policy.quotas.insert("baremetal".into(), Quota { max_machines: Some(1), max_milli_cpu: None });
    let snapshot = Snapshot {
        catalog: catalog(vec![metal, offering("aws", "m", 4, 8, 150_000, None)]),
        policy,
        ..Snapshot::default()
    };
    let tasks: Vec<TaskAsk> =
        (0..8).map(|i| TaskAsk { kind: WorkloadKind::Batch, ..ask(i, "g", 1000, 2 * GIB) }).collect();
    let plan = schedule(&snapshot, &tasks, 3);
    let providers: Vec<&str> = plan.provisions.iter().map(|p| p.provider.as_str()).collect();
    assert_eq!(providers, vec!["baremetal", "aws"]);
}

#[test]
fn work_no_offering_can_hold_says_why() {
    let snapshot =
        Snapshot { catalog: catalog(vec![offering("aws", "small", 2, 4, 100_000, None)]), ..Snapshot::default() };
    let plan = schedule(&snapshot, &[ask(1, "huge", 4000, GIB)], 1);
    let reason = &plan.unplaced[0].reason;
    assert_eq!(reason.offerings_too_small.get(&Dimension::Cpu), Some(&1));
    assert_eq!(
        reason.to_string(),
        "no machine is ready to receive work; no offering fits (evaluated 1; too little cpu on 1)"
    );
}

#[test]
fn service_replicas_get_a_new_machine_each() {
    let snapshot =
        Snapshot { catalog: catalog(vec![offering("aws", "large", 8, 16, 400_000, None)]), ..Snapshot::default() };
    let tasks: Vec<TaskAsk> = (0..3).map(|i| ask(i, "web", 500, GIB)).collect();
    let plan = schedule(&snapshot, &tasks, 1);
    assert_eq!(plan.provisions.len(), 3);
}

#[test]
fn a_higher_priority_task_evicts_the_fewest_lower_priority_ones() {
    let mut full = machine(1, 4000, 4 * GIB);
    full.allocated = Resources::new(4000, 4 * GIB);
    let mut other = machine(2, 4000, 4 * GIB);
    other.allocated = Resources::new(4000, 4 * GIB);
    let running = vec![
        RunningTask {
            task: TaskAsk { priority: 1, preemptible: true, ..ask(10, "low", 4000, 4 * GIB) },
            machine: Uuid::from_u128(1),
            ..RunningTask::default()
        },
        RunningTask {
            task: TaskAsk { priority: 1, preemptible: true, ..ask(11, "low", 2000, 2 * GIB) },
            machine: Uuid::from_u128(2),
            ..RunningTask::default()
        },
        RunningTask {
            task: TaskAsk { priority: 1, preemptible: true, ..ask(12, "low", 2000, 2 * GIB) },
            machine: Uuid::from_u128(2),
            ..RunningTask::default()
        },
    ];
    let snapshot = Snapshot { machines: vec![full, other], running, ..Snapshot::default() };
    let urgent = TaskAsk { priority: 5, ..ask(1, "urgent", 3000, 3 * GIB) };
    let plan = schedule(&snapshot, &[urgent], 1);
    assert_eq!(plan.preemptions.len(), 1, "{:?}", plan.preemptions);
    assert_eq!(plan.preemptions[0].task, Uuid::from_u128(1010));
    assert_eq!(plan.placements[0].machine, Uuid::from_u128(1));

    let same = TaskAsk { priority: 1, ..ask(2, "peer", 3000, 3 * GIB) };
    let plan = schedule(&snapshot, &[same], 1);
    assert!(plan.preemptions.is_empty(), "equal priority never evicts");
}

#[test]
fn consolidation_moves_tasks_off_the_emptiest_machine_and_respects_do_not_disrupt() {
    let mut a = priced(1, "aws", 4000, 8 * GIB, 200_000);
    a.allocated = Resources::new(1000, GIB);
    let mut b = priced(2, "aws", 4000, 8 * GIB, 200_000);
    b.allocated = Resources::new(2000, 2 * GIB);
    let running = vec![
        RunningTask { task: ask(1, "x", 1000, GIB), machine: a.id, ..RunningTask::default() },
        RunningTask { task: ask(2, "y", 2000, 2 * GIB), machine: b.id, ..RunningTask::default() },
    ];
    let snapshot = Snapshot { machines: vec![a.clone(), b.clone()], running: running.clone(), ..Snapshot::default() };
    let plan = consolidate(&snapshot, &DisruptionBudget::default(), 1);
    assert_eq!(plan.drains, vec![Drain { machine: a.id, saving: 200_000 }]);
    assert_eq!(plan.moves, vec![Move { task: Uuid::from_u128(1001), from: a.id, to: b.id }]);

    let mut pinned = running;
    pinned[0].do_not_disrupt = true;
    let snapshot = Snapshot { machines: vec![a, b], running: pinned, ..Snapshot::default() };
    let plan = consolidate(&snapshot, &DisruptionBudget::default(), 1);
    assert_eq!(plan.drains.iter().map(|d| d.machine).collect::<Vec<_>>(), vec![Uuid::from_u128(2)]);
}

#[test]
fn consolidation_replaces_an_oversized_machine_by_a_cheaper_one() {
    let mut big = priced(1, "aws", 16000, 64 * GIB, 800_000);
    big.allocated = Resources::new(1000, GIB);
    let snapshot = Snapshot {
        machines: vec![big.clone()],
        running: vec![RunningTask { task: ask(1, "x", 1000, GIB), machine: big.id, ..RunningTask::default() }],
        catalog: catalog(vec![offering("aws", "small", 2, 4, 100_000, None)]),
        ..Snapshot::default()
    };
    let plan = consolidate(&snapshot, &DisruptionBudget::default(), 1);
    assert_eq!(plan.provisions.len(), 1);
    assert_eq!(plan.drains, vec![Drain { machine: big.id, saving: 700_000 }]);
}

#[test]
fn explanation_names_the_next_best_provider() {
    let snapshot = Snapshot {
        catalog: catalog(vec![
            offering("aws", "m", 4, 16, 200_000, None),
            offering("azure", "d", 4, 16, 240_000, None),
        ]),
        ..Snapshot::default()
    };
    let task = ask(1, "a", 1000, 4 * GIB);
    let why = explain(&snapshot, &task, Some(("aws", "m", Resources::new(4000, 16 * GIB), 200_000)));
    assert_eq!(why.chosen.as_ref().map(|c| c.cost), Some(50_000));
    let next = why.next_best.expect("azure can hold it");
    assert_eq!((next.provider.as_str(), next.cost), ("azure", 60_000));
}

fn arb_input() -> impl Strategy<Value = (Snapshot, Vec<TaskAsk>, u64)> {
    let machines = prop::collection::vec((1u64..8000, 1u64..8192, 0u64..3, any::<bool>(), 0u8..3), 0..12);
    let tasks = prop::collection::vec((1u64..3000, 1u64..3000, 0u8..4, -2i32..3, any::<bool>(), any::<bool>()), 0..60);
    let running = prop::collection::vec((1u64..2000, 1u64..2000, -2i32..3, any::<bool>(), 0usize..12), 0..20);
    (machines, tasks, running, any::<u64>()).prop_map(|(machines, tasks, running, seed)| {
        let mut machines: Vec<MachineView> = machines
            .into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, price, spot, provider))| MachineView {
                spot,
                price: price * 1000,
                provider: format!("p{provider}"),
                zone: format!("z{}", i % 2),
                ..machine(i as u128, cpu, mem)
            })
            .collect();
        let tasks: Vec<TaskAsk> = tasks
            .into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, group, priority, interruptible, batch))| TaskAsk {
                priority,
                interruptible,
                kind: if batch { WorkloadKind::Batch } else { WorkloadKind::Service },
                spread: Spread { zones: group == 1, max_per_machine: u32::from(group == 2) * 2, ..Spread::default() },
                ..ask(i as u128, &format!("g{group}"), cpu, mem)
            })
            .collect();
        let mut placed = Vec::new();
        for (i, (cpu, mem, priority, preemptible, at)) in running.into_iter().enumerate() {
            let Some(m) = machines.get_mut(at) else {
                continue;
            };
            let need = Resources::new(cpu, mem);
            if !m.free().fits(&need) {
                continue;
            }
            m.allocated += need;
            let group = format!("r{}", i % 3);
            *m.group_counts.entry(group.clone()).or_default() += 1;
            let task = TaskAsk { priority, preemptible, ..ask(500 + i as u128, &group, cpu, mem) };
            placed.push(RunningTask { task, machine: m.id, do_not_disrupt: i % 5 == 0 });
        }
        let catalog =
            catalog(vec![offering("p0", "a", 2, 4, 100_000, Some(40_000)), offering("p1", "b", 4, 4, 150_000, None)]);
        (Snapshot { machines, running: placed, catalog, policy: Policy::default() }, tasks, seed)
    })
}

proptest! {
    #[test]
    fn never_overcommits_and_accounts_for_every_task((snapshot, tasks, seed) in arb_input()) {
        let plan = schedule(&snapshot, &tasks, seed);
        let provisioned: usize = plan.provisions.iter().map(|p| p.tasks.len()).sum();
        prop_assert_eq!(plan.placements.len() + plan.unplaced.len() + provisioned, tasks.len());
        let evicted: Vec<&RunningTask> = snapshot.running.iter().filter(|r| plan.preemptions.iter().any(|p| p.task == r.task.id)).collect();
        for machine in &snapshot.machines {
            let freed: Resources = evicted.iter().filter(|r| r.machine == machine.id).map(|r| r.task.resources).sum();
            let added: Resources = plan.placements.iter()
                .filter(|p| p.machine == machine.id)
                .map(|p| tasks.iter().find(|t| t.id == p.task).map(|t| t.resources).unwrap_or_default())
                .sum();
            let used = (machine.allocated + added).saturating_sub(&freed);
            prop_assert!(machine.capacity.fits(&used), "machine {} overcommitted", machine.id);
        }
        for provision in &plan.provisions {
            let used: Resources = provision.tasks.iter().map(|id| tasks.iter().find(|t| t.id == *id).map(|t| t.resources).unwrap_or_default()).sum();
            prop_assert!(provision.capacity.fits(&used));
            if provision.spot {
                prop_assert!(provision.tasks.iter().all(|id| tasks.iter().any(|t| t.id == *id && t.interruptible)));
            }
        }
        for unplaced in &plan.unplaced {
            prop_assert_eq!(unplaced.reason.machines_evaluated as usize, snapshot.machines.len());
            prop_assert!(!unplaced.reason.to_string().is_empty());
            prop_assert!(unplaced.reason.machines_evaluated == 0 || unplaced.reason.filtered.values().sum::<u32>() + unplaced.reason.exhausted.values().sum::<u32>() > 0);
        }
    }

    #[test]
    fn preemption_only_goes_downward((snapshot, tasks, seed) in arb_input()) {
        let plan = schedule(&snapshot, &tasks, seed);
        for preemption in &plan.preemptions {
            let victim = snapshot.running.iter().find(|r| r.task.id == preemption.task).expect("victim runs");
            let winner = tasks.iter().find(|t| t.id == preemption.for_task).expect("winner pending");
            prop_assert!(victim.task.preemptible);
            prop_assert!(victim.task.priority < winner.priority);
        }
    }

    #[test]
    fn same_input_and_seed_give_the_same_plan((snapshot, tasks, seed) in arb_input()) {
        let mut reversed = tasks.clone();
        reversed.reverse();
        prop_assert_eq!(schedule(&snapshot, &tasks, seed), schedule(&snapshot, &reversed, seed));
        prop_assert_eq!(consolidate(&snapshot, &DisruptionBudget::default(), seed), consolidate(&snapshot, &DisruptionBudget::default(), seed));
    }

    #[test]
    fn consolidation_never_raises_cost_nor_overcommits((snapshot, _tasks, seed) in arb_input()) {
        let plan = consolidate(&snapshot, &DisruptionBudget { max_utilization_permille: 1000, ..DisruptionBudget::default() }, seed);
        let before: u64 = snapshot.machines.iter().map(|m| m.price).sum();
        let drained: u64 = plan.drains.iter().map(|d| snapshot.machines.iter().find(|m| m.id == d.machine).map(|m| m.price).unwrap_or(0)).sum();
        let bought: u64 = plan.provisions.iter().map(|p| p.price).sum();
        prop_assert!(before - drained + bought <= before);
        for machine in &snapshot.machines {
            let moved_in: Resources = plan.moves.iter().filter(|m| m.to == machine.id)
                .map(|m| snapshot.running.iter().find(|r| r.task.id == m.task).map(|r| r.task.resources).unwrap_or_default()).sum();
            prop_assert!(machine.capacity.fits(&(machine.allocated + moved_in)));
            prop_assert!(!plan.drains.iter().any(|d| d.machine == machine.id) || !machine.do_not_disrupt);
        }
        for m in &plan.moves {
            let task = snapshot.running.iter().find(|r| r.task.id == m.task).expect("moved task runs");
            prop_assert!(!task.do_not_disrupt);
        }
    }
}
