//! Provider evacuation: moving everything off one provider without losing an app.
//!
//! [`plan_evacuation`] is the preview: the provider's tasks are given to the same scheduler
//! as pending work, on a snapshot without the provider's machines and offerings, so the
//! answer says where each task would go, what would be bought (priced from the catalog), what
//! the bill would be before and after, and how long it would take. [`next_wave`] is the rule
//! the control service drains the provider's machines by, one wave after another, so that no
//! app has more tasks moving at once than its [`disruption_budget`]; the preview counts its
//! waves with the same rule ([`waves`]). The move itself is not here: a task on a draining
//! machine gets a successor placed by the scheduler and stops only once that one is healthy.

use super::catalog::Catalog;
use super::model::{MicrosPerHour, Provision, Snapshot, TaskAsk, Unplaced};
use super::schedule;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// How many tasks of one app may be moving at once: its rolling-update allowance
/// (`max(max_surge, max_unavailable, 1)`), and never every instance of an app that has two or
/// more. Batch work has no availability to keep: all of a job's tasks may move at once.
pub fn disruption_budget(instances: u32, max_surge: u32, max_unavailable: u32, batch: bool) -> u32 {
    if batch {
        return u32::MAX;
    }
    let budget = max_surge.max(max_unavailable).max(1);
    if instances >= 2 { budget.min(instances - 1) } else { budget }
}

/// One of the evacuated provider's machines that has not started draining yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitingMachine {
    pub id: Uuid,
    /// How many tasks of each group (app) it still runs.
    pub groups: BTreeMap<String, u32>,
}

/// The machines that may start draining now, given how many tasks of each group are already
/// moving (on machines draining earlier) and each group's budget (a group absent from
/// `budgets` has a budget of 1). Machines are taken fewest tasks first, then by id. A machine
/// whose groups are all still at rest may always go, even if it alone holds more of a group
/// than its budget: otherwise such a machine could never be evacuated (each of those tasks
/// still keeps serving until its successor is healthy).
pub fn next_wave(
    waiting: &[WaitingMachine],
    moving: &BTreeMap<String, u32>,
    budgets: &BTreeMap<String, u32>,
) -> Vec<Uuid> {
    let mut order: Vec<&WaitingMachine> = waiting.iter().collect();
    order.sort_by_key(|m| (m.groups.values().map(|&n| u64::from(n)).sum::<u64>(), m.id));
    let mut moving = moving.clone();
    let mut wave = Vec::new();
    for machine in order {
        let fits = machine.groups.iter().all(|(group, &n)| {
            let now = moving.get(group).copied().unwrap_or(0);
            let budget = budgets.get(group).copied().unwrap_or(1);
            now == 0 || now.saturating_add(n) <= budget
        });
        if fits {
            for (group, &n) in &machine.groups {
                let now = moving.entry(group.clone()).or_default();
                *now = now.saturating_add(n);
            }
            wave.push(machine.id);
        }
    }
    wave
}

/// Every wave, assuming each one completes before the next starts.
pub fn waves(machines: &[WaitingMachine], budgets: &BTreeMap<String, u32>) -> Vec<Vec<Uuid>> {
    let mut waiting = machines.to_vec();
    let mut waves = Vec::new();
    while !waiting.is_empty() {
        let wave = next_wave(&waiting, &BTreeMap::new(), budgets);
        // The first machine in order always fits an empty wave, so this never loops forever.
        let gone: HashSet<Uuid> = wave.iter().copied().collect();
        waiting.retain(|m| !gone.contains(&m.id));
        waves.push(wave);
    }
    waves
}

/// What the estimate of an evacuation's duration is built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// Seconds a new machine of each provider took to boot and join (observed).
    pub boot_seconds: BTreeMap<String, u64>,
    /// For a provider never observed booting.
    pub typical_boot_seconds: u64,
    /// One wave: successors start on machines that are up and pass their health checks,
    /// then the old tasks stop.
    pub wave_seconds: u64,
}

/// A task leaving the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relocation {
    pub task: Uuid,
    pub from: Uuid,
    /// An existing machine, or the id of one of the plan's purchases.
    pub to: Uuid,
}

/// The preview of an evacuation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuationPlan {
    pub relocations: Vec<Relocation>,
    /// Machines to buy first, with the tasks meant for them.
    pub purchases: Vec<Provision>,
    /// The provider's machines, given back once empty.
    pub releases: Vec<Uuid>,
    /// Tasks with nowhere to go, and why.
    pub unplaced: Vec<Unplaced>,
    /// The provider's machines, wave by wave.
    pub waves: Vec<Vec<Uuid>>,
    /// The hourly cost of the machines there are, and once the evacuation is done.
    pub cost_before: MicrosPerHour,
    pub cost_after: MicrosPerHour,
    /// The longest boot among the providers bought from (0 when nothing is bought).
    pub boot_seconds: u64,
    pub estimated_seconds: u64,
}

/// Plans the evacuation of `provider`: the tasks on its machines (`snapshot.running`) are
/// placed by [`schedule`] on the other machines or on machines bought from the rest of the
/// catalog, never by evicting anyone; its machines are released in [`waves`] under `budgets`.
pub fn plan_evacuation(
    snapshot: &Snapshot,
    provider: &str,
    budgets: &BTreeMap<String, u32>,
    timing: &Timing,
    seed: u64,
) -> EvacuationPlan {
    let leaving: HashSet<Uuid> = snapshot.machines.iter().filter(|m| m.provider == provider).map(|m| m.id).collect();
    let rest = Snapshot {
        machines: snapshot.machines.iter().filter(|m| !leaving.contains(&m.id)).cloned().collect(),
        // Without running tasks the scheduler cannot preempt: an evacuation evicts nobody.
        running: Vec::new(),
        catalog: Arc::new(Catalog {
            offerings: snapshot.catalog.offerings.iter().filter(|o| o.provider != provider).cloned().collect(),
        }),
        policy: snapshot.policy.clone(),
    };
    let moving: Vec<&super::model::RunningTask> =
        snapshot.running.iter().filter(|r| leaving.contains(&r.machine)).collect();
    let asks: Vec<TaskAsk> = moving.iter().map(|r| r.task.clone()).collect();
    let from: HashMap<Uuid, Uuid> = moving.iter().map(|r| (r.task.id, r.machine)).collect();
    let placed = schedule(&rest, &asks, seed);

    let mut relocations: Vec<Relocation> =
        placed.placements.iter().map(|p| Relocation { task: p.task, from: from[&p.task], to: p.machine }).collect();
    for purchase in &placed.provisions {
        relocations.extend(purchase.tasks.iter().map(|&task| Relocation { task, from: from[&task], to: purchase.id }));
    }
    relocations.sort_by_key(|r| (r.from, r.task));

    let mut waiting: BTreeMap<Uuid, WaitingMachine> =
        leaving.iter().map(|&id| (id, WaitingMachine { id, groups: BTreeMap::new() })).collect();
    for task in &moving {
        if let Some(machine) = waiting.get_mut(&task.machine) {
            *machine.groups.entry(task.task.group.clone()).or_default() += 1;
        }
    }
    let waiting: Vec<WaitingMachine> = waiting.into_values().collect();
    let waves = waves(&waiting, budgets);

    let cost_before = snapshot.machines.iter().map(|m| m.price).sum();
    let cost_after =
        rest.machines.iter().map(|m| m.price).sum::<u64>() + placed.provisions.iter().map(|p| p.price).sum::<u64>();
    let boot_seconds = placed
        .provisions
        .iter()
        .map(|p| timing.boot_seconds.get(&p.provider).copied().unwrap_or(timing.typical_boot_seconds))
        .max()
        .unwrap_or(0);
    let estimated_seconds = boot_seconds + waves.len() as u64 * timing.wave_seconds;
    EvacuationPlan {
        relocations,
        purchases: placed.provisions,
        releases: waiting.iter().map(|m| m.id).collect(),
        unplaced: placed.unplaced,
        waves,
        cost_before,
        cost_after,
        boot_seconds,
        estimated_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;
    use crate::schedule::{Constraints, MachineView, Offering, RunningTask};
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn machine(n: u128, provider: &str, price: u64) -> MachineView {
        MachineView {
            id: Uuid::from_u128(n),
            provider: provider.into(),
            region: "r1".into(),
            capacity: Resources::new(2000, 2 * GIB),
            price,
            ..MachineView::default()
        }
    }

    fn running(n: u128, group: &str, on: u128, cpu: u64) -> RunningTask {
        RunningTask {
            task: TaskAsk {
                id: Uuid::from_u128(1000 + n),
                group: group.into(),
                resources: Resources::new(cpu, 256 << 20),
                ..TaskAsk::default()
            },
            machine: Uuid::from_u128(on),
            do_not_disrupt: false,
        }
    }

    /// Machines with the running tasks counted in their allocation, as the store builds them.
    fn snapshot(mut machines: Vec<MachineView>, running: Vec<RunningTask>, offerings: Vec<Offering>) -> Snapshot {
        for task in &running {
            let machine = machines.iter_mut().find(|m| m.id == task.machine).expect("machine");
            machine.allocated += task.task.resources;
            *machine.group_counts.entry(task.task.group.clone()).or_default() += 1;
        }
        Snapshot { machines, running, catalog: Arc::new(Catalog { offerings }), ..Snapshot::default() }
    }

    fn offering(provider: &str, name: &str, price: u64) -> Offering {
        Offering {
            provider: provider.into(),
            region: "r1".into(),
            instance_type: name.into(),
            capacity: Resources::new(2000, 2 * GIB),
            price_on_demand: price,
            ..Offering::default()
        }
    }

    fn timing() -> Timing {
        Timing { boot_seconds: BTreeMap::from([("azure".to_string(), 40)]), typical_boot_seconds: 90, wave_seconds: 15 }
    }

    #[test]
    fn budgets_follow_the_update_allowance_and_never_take_every_instance() {
        assert_eq!(disruption_budget(1, 1, 0, false), 1, "a single instance moves (its old copy serves meanwhile)");
        assert_eq!(disruption_budget(2, 1, 0, false), 1);
        assert_eq!(disruption_budget(2, 5, 5, false), 1, "never both of two");
        assert_eq!(disruption_budget(10, 1, 3, false), 3, "max_unavailable widens it");
        assert_eq!(disruption_budget(10, 0, 0, false), 1, "at least one, or nothing could move");
        assert_eq!(disruption_budget(3, 1, 0, true), u32::MAX, "batch work moves at once");
    }

    #[test]
    fn a_wave_never_moves_more_of_an_app_than_its_budget() {
        let m = |n: u128, groups: &[(&str, u32)]| WaitingMachine {
            id: Uuid::from_u128(n),
            groups: groups.iter().map(|&(g, c)| (g.to_string(), c)).collect(),
        };
        let machines = [m(1, &[("web", 1)]), m(2, &[("web", 1), ("job", 2)]), m(3, &[("web", 1)]), m(4, &[])];
        let budgets = BTreeMap::from([("web".to_string(), 1), ("job".to_string(), u32::MAX)]);
        // The empty machine goes at once; web moves one instance at a time.
        assert_eq!(next_wave(&machines, &BTreeMap::new(), &budgets), vec![Uuid::from_u128(4), Uuid::from_u128(1)]);
        let one_moving = BTreeMap::from([("web".to_string(), 1)]);
        assert!(next_wave(&machines[1..3], &one_moving, &budgets).is_empty(), "web is at its budget");
        assert_eq!(
            waves(&machines, &budgets),
            vec![vec![Uuid::from_u128(4), Uuid::from_u128(1)], vec![Uuid::from_u128(3)], vec![Uuid::from_u128(2)]]
        );
        // A machine holding more of an app than its budget still goes, alone for that app.
        let crowded = [m(5, &[("web", 3)])];
        assert_eq!(next_wave(&crowded, &BTreeMap::new(), &budgets), vec![Uuid::from_u128(5)]);
        assert!(next_wave(&crowded, &one_moving, &budgets).is_empty());
    }

    #[test]
    fn the_plan_moves_everything_onto_other_providers_buying_first_and_prices_both_sides() {
        // aws: two machines (0.10 $/h each) with web x2 and a job task; azure: one busy
        // machine with room for one more task. The catalog still sells aws, cheaper: the plan
        // must not buy there.
        let machines = vec![machine(1, "aws", 100_000), machine(2, "aws", 100_000), machine(3, "azure", 150_000)];
        let running = vec![
            running(1, "web", 1, 500),
            running(2, "web", 2, 500),
            running(3, "job", 2, 1000),
            running(4, "other", 3, 1500),
        ];
        let offerings = vec![offering("aws", "small", 50_000), offering("azure", "B2", 120_000)];
        let snapshot = snapshot(machines, running, offerings);
        let budgets = BTreeMap::from([("web".to_string(), 1), ("job".to_string(), u32::MAX)]);
        let plan = plan_evacuation(&snapshot, "aws", &budgets, &timing(), 7);

        assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
        assert_eq!(plan.relocations.len(), 3, "every task on aws moves: {:?}", plan.relocations);
        assert!(plan.purchases.iter().all(|p| p.provider == "azure"), "{:?}", plan.purchases);
        let targets: HashSet<Uuid> = plan.relocations.iter().map(|r| r.to).collect();
        assert!(!targets.contains(&Uuid::from_u128(1)) && !targets.contains(&Uuid::from_u128(2)));
        let bought: u64 = plan.purchases.iter().map(|p| p.price).sum();
        assert_eq!(plan.cost_before, 350_000);
        assert_eq!(plan.cost_after, 150_000 + bought);
        assert_eq!(plan.releases, vec![Uuid::from_u128(1), Uuid::from_u128(2)]);
        // web's two instances are on two machines and move one at a time: two waves; azure
        // was seen booting in 40 s.
        assert_eq!(plan.waves.len(), 2);
        assert_eq!(plan.boot_seconds, 40);
        assert_eq!(plan.estimated_seconds, 40 + 2 * 15);
        // Deterministic for a seed.
        assert_eq!(plan, plan_evacuation(&snapshot, "aws", &budgets, &timing(), 7));
    }

    #[test]
    fn what_can_only_run_on_the_provider_is_reported_unplaced_and_nobody_is_evicted() {
        let machines = vec![machine(1, "aws", 100_000), machine(2, "azure", 100_000)];
        let mut pinned = running(1, "pinned", 1, 500);
        pinned.task.constraints = Constraints { providers: vec!["aws".into()], ..Constraints::default() };
        let big = running(2, "big", 1, 1000);
        // azure's machine is full of preemptible batch work: an evacuation does not evict it.
        let mut batch = running(3, "batch", 2, 2000);
        batch.task.preemptible = true;
        batch.task.priority = -10;
        let snapshot = snapshot(machines, vec![pinned, big, batch], Vec::new());
        let plan = plan_evacuation(&snapshot, "aws", &BTreeMap::new(), &timing(), 1);
        let unplaced: HashSet<Uuid> = plan.unplaced.iter().map(|u| u.task).collect();
        assert_eq!(unplaced, HashSet::from([Uuid::from_u128(1001), Uuid::from_u128(1002)]));
        assert!(plan.relocations.is_empty() && plan.purchases.is_empty());
        assert_eq!(plan.estimated_seconds, 15, "one wave, nothing to boot");
    }

    proptest! {
        /// Every machine is in exactly one wave, and no wave moves more of a group than its
        /// budget unless one machine alone holds more than that.
        #[test]
        fn waves_cover_every_machine_within_budgets(
            loads in proptest::collection::vec(proptest::collection::vec((0u8..4, 1u32..4), 0..4), 0..12),
            budget in 1u32..3,
        ) {
            let machines: Vec<WaitingMachine> = loads.iter().enumerate().map(|(i, groups)| WaitingMachine {
                id: Uuid::from_u128(i as u128),
                groups: groups.iter().map(|&(g, n)| (format!("g{g}"), n)).collect(),
            }).collect();
            let budgets: BTreeMap<String, u32> = (0..4).map(|g| (format!("g{g}"), budget)).collect();
            let waves = waves(&machines, &budgets);
            let mut seen: Vec<Uuid> = waves.iter().flatten().copied().collect();
            seen.sort();
            prop_assert_eq!(seen, machines.iter().map(|m| m.id).collect::<Vec<_>>());
            for wave in &waves {
                let mut per_group: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
                for machine in machines.iter().filter(|m| wave.contains(&m.id)) {
                    for (group, &n) in &machine.groups {
                        let entry = per_group.entry(group.as_str()).or_default();
                        entry.0 += n;
                        entry.1 += 1;
                    }
                }
                for (total, machines_with_it) in per_group.values() {
                    prop_assert!(*total <= budget || *machines_with_it == 1);
                }
            }
        }
    }
}
