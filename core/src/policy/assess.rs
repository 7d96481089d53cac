//! Assessment: the steps the module doc describes, done once for a workload. A dry run per
//! provider the hard residency rules leave (what it would cost there, or why it fits nowhere
//! there), the verdicts given those dry runs, what the verdicts bind the workload to (a
//! [`Binding`], which placement applies to every task of the workload later), and the
//! placement Canopy would make under it, with its hourly cost. Pure: the caller brings the
//! snapshot (machines with what is allocated on them, the catalog, quotas) and the context.

use super::evaluate::{Context, Verdicts, Workload, evaluate, places};
use super::{Allowed, Enforcement, Money, Places, PolicyDocument, applies};
use crate::cost::{AllocationMode, CostSplit, IdlePolicy, MachineInterval, TaskInterval, allocate};
use crate::resources::Resources;
use crate::schedule::{Catalog, Constraints, MicrosPerHour, Plan, Snapshot, TaskAsk, WorkloadKind, schedule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// Where the policies let a workload's tasks go and how: stored with the app and applied by
/// placement to each of its tasks. `None` in a dimension: no limit beyond the spec's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub providers: Option<Vec<String>>,
    pub regions: Option<Vec<String>>,
    pub zones: Option<Vec<String>>,
    /// False when a hard spot rule keeps this kind of workload off spot capacity.
    pub spot: bool,
    /// The first this-many instances of a service run on on-demand capacity.
    pub min_on_demand: u32,
}

impl Binding {
    /// What `verdicts` bind `workload` to; `policies` are the ones given to [`evaluate`].
    pub fn of(verdicts: &Verdicts, policies: &[PolicyDocument], workload: &Workload) -> Binding {
        // Only a hard rule with an opinion on this kind keeps it off spot; with none, the
        // workload's own `interruptible` decides, as without policies.
        let opinionated =
            policies.iter().filter(|p| p.enforcement == Enforcement::Hard && applies(p, workload)).any(|p| {
                match (p.spot, workload.kind) {
                    (Some(rule), WorkloadKind::Service) => rule.services.is_some(),
                    (Some(rule), WorkloadKind::Batch) => rule.batch.is_some(),
                    (None, _) => false,
                }
            });
        let spot = match (&verdicts.policy, opinionated) {
            (Some(policy), true) => match workload.kind {
                WorkloadKind::Service => policy.spot.service,
                WorkloadKind::Batch => policy.spot.batch,
            },
            _ => true,
        };
        Binding { spot, min_on_demand: verdicts.min_on_demand, ..Binding::of_places(&verdicts.places) }
    }

    /// Places only, spot unrestricted.
    fn of_places(places: &Places) -> Binding {
        let list = |allowed: &Allowed| match allowed {
            Allowed::Any => None,
            Allowed::Only(set) => Some(set.iter().cloned().collect()),
        };
        Binding {
            providers: list(&places.providers),
            regions: list(&places.regions),
            zones: list(&places.zones),
            spot: true,
            min_on_demand: 0,
        }
    }

    fn places(&self) -> Places {
        let allowed = |list: &Option<Vec<String>>| match list {
            None => Allowed::Any,
            Some(list) => Allowed::Only(list.iter().cloned().collect()),
        };
        Places { providers: allowed(&self.providers), regions: allowed(&self.regions), zones: allowed(&self.zones) }
    }

    /// A task's constraints narrowed to the binding, or `None` when no place is left.
    pub fn constrain(&self, constraints: &Constraints) -> Option<Constraints> {
        self.places().constrain(constraints)
    }

    /// Whether instance `instance` of a workload that is `interruptible` may go to spot.
    pub fn interruptible(&self, interruptible: bool, instance: u32) -> bool {
        interruptible && self.spot && instance >= self.min_on_demand
    }

    /// `ask` as placement must see it: constraints narrowed (`None`: nowhere left) and spot
    /// use as bound; `instance` is the task's instance index.
    pub fn apply(&self, ask: &TaskAsk, instance: u32) -> Option<TaskAsk> {
        let constraints = self.constrain(&ask.constraints)?;
        Some(TaskAsk { constraints, interruptible: self.interruptible(ask.interruptible, instance), ..ask.clone() })
    }
}

/// What a dry run on one provider found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRun {
    pub provider: String,
    /// The workload's hourly cost there, when every task found room.
    pub cost: Option<Money>,
    /// Why not, when a task found none (the scheduler's reason).
    pub unplaced: Option<String>,
}

/// One machine of the placement Canopy would make: an existing one or one to buy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The existing machine's id, or `None` for a machine to buy.
    pub machine: Option<Uuid>,
    pub provider: String,
    pub region: String,
    pub zone: String,
    /// The machine's offering (instance type).
    pub offering: String,
    pub spot: bool,
    pub tasks: u32,
    /// What the workload's tasks there cost per hour: their share of an existing machine, the
    /// whole price of one bought for them.
    pub cost: Money,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    pub verdicts: Verdicts,
    pub binding: Binding,
    /// One per provider the hard residency rules leave, by name.
    pub runs: Vec<ProviderRun>,
    /// The placement Canopy would make under the binding (empty when refused or when some
    /// task has no room: `unplaced` then says why).
    pub placement: Vec<Placed>,
    pub unplaced: Option<String>,
    /// The hourly cost of that placement.
    pub cost: Money,
}

/// Assesses `workload`, whose tasks are `asks` (in instance order), against `policies`.
/// `context.dry_runs` is filled here; `snapshot` is the pool as it is (its policy carries the
/// quotas; spot use is decided per task).
pub fn assess(
    policies: &[PolicyDocument],
    workload: &Workload,
    asks: &[TaskAsk],
    snapshot: &Snapshot,
    context: &Context,
    seed: u64,
) -> Assessment {
    let allowed = places(policies, workload, &context.known_regions);
    let mut runs = Vec::new();
    for provider in allowed.provider_names() {
        let only = Places { providers: Allowed::Only([provider.to_string()].into()), ..allowed.clone() };
        let binding = Binding::of_places(&only);
        let sub = Snapshot {
            machines: snapshot.machines.iter().filter(|m| m.provider == provider).cloned().collect(),
            catalog: Arc::new(Catalog {
                offerings: snapshot.catalog.offerings.iter().filter(|o| o.provider == provider).cloned().collect(),
            }),
            ..snapshot.clone()
        };
        let (cost, unplaced) = match place(&sub, asks, &binding, seed) {
            Ok((_, cost)) => (Some(Money(cost)), None),
            Err(why) => (None, Some(why)),
        };
        runs.push(ProviderRun { provider: provider.to_string(), cost, unplaced });
    }
    let context = Context {
        dry_runs: runs.iter().filter_map(|r| r.cost.map(|c| (r.provider.clone(), c.0))).collect(),
        ..context.clone()
    };
    let verdicts = evaluate(policies, workload, &context);
    let binding = Binding::of(&verdicts, policies, workload);
    let (placement, unplaced, cost) = if verdicts.refused() {
        (Vec::new(), Some("refused by policy".to_string()), Money(0))
    } else {
        match place(snapshot, asks, &binding, seed) {
            Ok((placement, cost)) => (placement, None, Money(cost)),
            Err(why) => (Vec::new(), Some(why), Money(0)),
        }
    };
    Assessment { verdicts, binding, runs, placement, unplaced, cost }
}

impl Default for Binding {
    /// Bound to nothing: anywhere the spec allows, spot as the spec says.
    fn default() -> Self {
        Binding::of_places(&Places::default())
    }
}

/// Schedules `asks` bound by `binding` on `snapshot`: the machines used and the hourly cost,
/// or why some task has no room.
fn place(snapshot: &Snapshot, asks: &[TaskAsk], binding: &Binding, seed: u64) -> Result<(Vec<Placed>, u64), String> {
    let mut bound = Vec::with_capacity(asks.len());
    for (instance, ask) in asks.iter().enumerate() {
        match binding.apply(ask, u32::try_from(instance).unwrap_or(u32::MAX)) {
            Some(ask) => bound.push(ask),
            None => return Err("the policies and the workload's placement leave no place".to_string()),
        }
    }
    let plan = schedule(snapshot, &bound, seed);
    if let Some(unplaced) = plan.unplaced.first() {
        return Err(unplaced.reason.to_string());
    }
    let placed = summarize(&plan, snapshot, &bound);
    let cost = placed.iter().map(|p| p.cost.0).sum();
    Ok((placed, cost))
}

/// The plan's machines with the tasks' cost on each.
fn summarize(plan: &Plan, snapshot: &Snapshot, asks: &[TaskAsk]) -> Vec<Placed> {
    let resources: BTreeMap<Uuid, Resources> = asks.iter().map(|a| (a.id, a.resources)).collect();
    let mut by_machine: BTreeMap<Uuid, Placed> = BTreeMap::new();
    for placement in &plan.placements {
        let Some(machine) = snapshot.machines.iter().find(|m| m.id == placement.machine) else { continue };
        let ask = resources.get(&placement.task).copied().unwrap_or_default();
        let entry = by_machine.entry(machine.id).or_insert_with(|| Placed {
            machine: Some(machine.id),
            provider: machine.provider.clone(),
            region: machine.region.clone(),
            zone: machine.zone.clone(),
            offering: machine.offering.clone(),
            spot: machine.spot,
            tasks: 0,
            cost: Money(0),
        });
        entry.tasks += 1;
        entry.cost.0 += hourly_share(machine.price, machine.capacity, ask);
    }
    let mut placed: Vec<Placed> = by_machine.into_values().collect();
    placed.extend(plan.provisions.iter().map(|p| Placed {
        machine: None,
        provider: p.provider.clone(),
        region: p.region.clone(),
        zone: p.zone.clone(),
        offering: p.instance_type.clone(),
        spot: p.spot,
        tasks: u32::try_from(p.tasks.len()).unwrap_or(u32::MAX),
        cost: Money(p.price),
    }));
    placed
}

/// What holding `request` on a machine of `capacity` costs per hour, by the same rule as cost
/// reports ([`allocate`] by request over one hour, idle reported apart).
pub fn hourly_share(price: MicrosPerHour, capacity: Resources, request: Resources) -> MicrosPerHour {
    let hour = 3_600_000;
    let machine = MachineInterval {
        machine_id: String::new(),
        provider: String::new(),
        region: String::new(),
        offering: String::new(),
        price_kind: Default::default(),
        price_per_hour: price,
        capacity,
        split: CostSplit::reference(capacity),
        start_ms: 0,
        end_ms: hour,
    };
    let task = TaskInterval {
        task_id: String::new(),
        team: String::new(),
        app: String::new(),
        start_ms: 0,
        end_ms: hour,
        request,
        usage: None,
    };
    allocate(&machine, &[task], AllocationMode::Request, IdlePolicy::Report).allocated()
}
