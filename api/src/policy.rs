//! Policy assessments as the control service runs them, for deploys, dry runs, `policy test`,
//! explanations and the portability re-check: the store reads the inputs, what can be bought
//! comes from the controllers ([`Buyable`]), and `canopy_core::policy::assess` decides. Also the
//! JSON answers these give.

use crate::auth::Scope;
use crate::controllers::Buyable;
use crate::store::{AppDetail, LiveSpec, PolicyInputs, Result, Store, StoreError, hours_left_in_month};
use canopy_core::Resources;
use canopy_core::policy::{
    Assessment, Binding, Context, Money, Outcome, PolicyDocument, ProviderRun, Rule, Verdict, Workload, applies, assess,
};
use canopy_core::schedule::{Constraints, Policy, Snapshot, SpotPolicy, TaskAsk, WorkloadKind};
use canopy_core::spec::AppSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

/// Seed of the assessments' dry runs: the same pool gives the same answer.
const ASSESS_SEED: u64 = 0xa55e55;

/// The tasks a spec runs at once (a service's instances, a job's parallelism), as placement
/// asks for them.
pub fn asks(spec: &AppSpec) -> Vec<TaskAsk> {
    let count = spec.job.as_ref().map_or(spec.instances, |job| job.parallelism);
    (0..count)
        .map(|index| TaskAsk {
            id: Uuid::from_u128(u128::from(index) + 1),
            group: spec.name.clone(),
            resources: Resources::new(spec.resources.cpu, spec.resources.memory.0),
            priority: spec.priority,
            kind: if spec.job.is_some() { WorkloadKind::Batch } else { WorkloadKind::Service },
            interruptible: spec.interruptible,
            // As placement: agents and sample apps are built for amd64.
            constraints: Constraints { arch: Some("amd64".into()), ..spec.placement.constraints() },
            ..Default::default()
        })
        .collect()
}

/// Assesses team `team`'s `spec` under the stored policies, with `candidate` (a policy being
/// tested) in place of the stored policy of its name.
pub async fn assess_spec(
    store: &Store,
    buyable: &Buyable,
    team: Uuid,
    spec: &AppSpec,
    candidate: Option<&PolicyDocument>,
) -> Result<(PolicyInputs, Assessment)> {
    let mut policies = store.current_policies().await?;
    if let Some(candidate) = candidate {
        policies.retain(|p| p.name != candidate.name);
        policies.push(candidate.clone());
    }
    let team_name = store.team_name(team).await?;
    let workload = Workload::from_spec(spec, &team_name, spec.labels.clone());
    let spend_matters =
        policies.iter().any(|p| applies(p, &workload) && (p.concentration.is_some() || p.budget.is_some()));
    let inputs = store.policy_inputs(team, &spec.name, spend_matters).await?;
    let known_regions: BTreeSet<String> = inputs
        .machines
        .iter()
        .map(|m| m.region.clone())
        .chain(buyable.catalog.offerings.iter().map(|o| o.region.clone()))
        .filter(|r| !r.is_empty())
        .collect();
    let context = Context {
        month_to_date: inputs.spend.month_to_date,
        run_rate: inputs.spend.run_rate.clone(),
        capacity: inputs.spend.capacity.clone(),
        dry_runs: Default::default(),
        hours_left: hours_left_in_month(inputs.now),
        known_regions,
    };
    // Spot is decided per task (the binding and the spec), as in placement.
    let snapshot = Snapshot {
        machines: inputs.machines.clone(),
        running: Vec::new(),
        catalog: buyable.catalog.clone(),
        policy: Policy {
            spot: SpotPolicy { service: true, batch: true },
            quotas: buyable.quotas.clone(),
            ..Default::default()
        },
    };
    let assessment = assess(&policies, &workload, &asks(spec), &snapshot, &context, ASSESS_SEED);
    Ok((inputs, assessment))
}

/// Whether any stored policy applies to team `team`'s `spec`: when none does there is nothing
/// to check or bind, and a deploy skips the dry runs.
pub fn any_applies(policies: &[PolicyDocument], team: &str, spec: &AppSpec) -> bool {
    let workload = Workload::from_spec(spec, team, spec.labels.clone());
    policies.iter().any(|p| applies(p, &workload))
}

/// Assesses team `team`'s `spec` for a change (deploy, scale) under the policies that apply
/// to it: a hard refusal is an error naming each policy, rule and the numbers; `None` when no
/// policy applies (nothing to check or bind, and no dry runs to pay for).
pub async fn admit(store: &Store, buyable: &Buyable, team: Uuid, spec: &AppSpec) -> Result<Option<Assessment>> {
    let policies = store.current_policies().await?;
    let team_name = store.team_name(team).await?;
    if !any_applies(&policies, &team_name, spec) {
        return Ok(None);
    }
    let (_, assessment) = assess_spec(store, buyable, team, spec, None).await?;
    if let Some(refusals) = refusals(&assessment) {
        tracing::info!(app = %spec.name, %refusals, "refused by policy");
        return Err(StoreError::PolicyRefused(refusals));
    }
    Ok(Some(assessment))
}

/// A scale-up costs more and needs more room: the policies must accept the app at its new size
/// (within its `[autoscale]` bounds), as at a deploy. Scaling down is never held back.
pub async fn admit_scale(store: &Store, buyable: &Buyable, scope: Scope, name: &str, instances: u32) -> Result<()> {
    let app = store.app(scope, name).await?;
    let instances = app.spec.autoscale.map_or(instances, |autoscale| autoscale.clamp(instances));
    if i64::from(instances) <= i64::from(app.summary.instances) {
        return Ok(());
    }
    if let Some(live) = store.live_specs(scope).await?.into_iter().find(|a| a.app_id == app.summary.id) {
        admit(store, buyable, live.team_id, &AppSpec { instances, ..live.spec }).await?;
    }
    Ok(())
}

/// Every refusal, one line each: "policy payments-limits (concentration): team payments: ...".
pub fn refusals(assessment: &Assessment) -> Option<String> {
    let refused: Vec<String> = assessment.verdicts.with_outcome(Outcome::Refuse).map(Verdict::to_string).collect();
    (!refused.is_empty()).then(|| refused.join("; "))
}

pub fn warnings(assessment: &Assessment) -> Vec<String> {
    assessment.verdicts.with_outcome(Outcome::Warn).map(Verdict::to_string).collect()
}

/// Why the app is not portable (its broken min_providers verdicts), '' when it is.
pub fn portability(assessment: &Assessment) -> String {
    let lost: Vec<String> = assessment
        .verdicts
        .verdicts
        .iter()
        .filter(|v| v.rule == Rule::Portability && v.outcome != Outcome::Allow)
        .map(Verdict::to_string)
        .collect();
    lost.join("; ")
}

/// Re-assesses every live app (after a policy or a catalog changed): records its binding and
/// whether it is still portable. Returns how many apps' portability flipped.
pub async fn recheck(store: &Store, buyable: &Buyable) -> Result<usize> {
    let mut flipped = 0;
    let policies = store.current_policies().await?;
    for app in store.live_specs(Scope::All).await? {
        let unbound = app.binding.as_ref().is_none_or(|b| *b == Binding::default()) && app.portability.is_empty();
        if unbound && !any_applies(&policies, &app.team, &app.spec) {
            continue;
        }
        let (_, assessment) = assess_spec(store, buyable, app.team_id, &app.spec, None).await?;
        let portability = portability(&assessment);
        if app.binding.as_ref() == Some(&assessment.binding) && app.portability == portability {
            continue;
        }
        if store.set_policy_outcome(&app, &assessment.binding, &portability).await? {
            tracing::warn!(app = %app.spec.name, team = %app.team, portability = %portability, "portability changed");
            flipped += 1;
        }
    }
    Ok(flipped)
}

/// `PUT /v1/apps/{name}`'s answer: the app, and the soft policies' warnings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployed {
    #[serde(flatten)]
    pub app: AppDetail,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One machine of a placement, by name (`None`: a machine to buy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub machine: Option<String>,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub offering: String,
    pub spot: bool,
    pub tasks: u32,
    pub cost: Money,
}

/// `canopy deploy --dry-run`: what a deploy would do, with nothing stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DryRun {
    pub app: String,
    pub team: String,
    /// False when a hard policy refuses it.
    pub accepted: bool,
    /// The machines Canopy would use (existing ones by name) and buy.
    pub placement: Vec<Place>,
    /// Why some task would find no room (or "refused by policy").
    pub unplaced: Option<String>,
    pub hourly_cost: Money,
    /// The same workload on each provider the residency rules leave.
    pub providers: Vec<ProviderRun>,
    pub verdicts: Vec<Verdict>,
    pub binding: Binding,
}

impl DryRun {
    pub fn new(spec: &AppSpec, team: &str, assessment: &Assessment, machine_names: &[(Uuid, String)]) -> DryRun {
        let placement = assessment
            .placement
            .iter()
            .map(|p| Place {
                machine: p.machine.and_then(|id| machine_names.iter().find(|(m, _)| *m == id).map(|(_, n)| n.clone())),
                provider: p.provider.clone(),
                region: p.region.clone(),
                zone: p.zone.clone(),
                offering: p.offering.clone(),
                spot: p.spot,
                tasks: p.tasks,
                cost: p.cost,
            })
            .collect();
        DryRun {
            app: spec.name.clone(),
            team: team.to_string(),
            accepted: !assessment.verdicts.refused(),
            placement,
            unplaced: assessment.unplaced.clone(),
            hourly_cost: assessment.cost,
            providers: assessment.runs.clone(),
            verdicts: assessment.verdicts.verdicts.clone(),
            binding: assessment.binding.clone(),
        }
    }
}

/// `canopy policy test`: one policy's verdicts on each workload it was tested against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyTest {
    pub policy: String,
    pub workloads: Vec<TestedWorkload>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestedWorkload {
    pub team: String,
    pub app: String,
    /// Whether the policy's scope takes in the workload at all.
    pub applies: bool,
    /// The worst of its verdicts (`allow` when it has none).
    pub outcome: Outcome,
    /// The tested policy's verdicts only.
    pub verdicts: Vec<Verdict>,
}

impl TestedWorkload {
    pub fn new(policy: &PolicyDocument, team: &str, spec: &AppSpec, assessment: &Assessment) -> TestedWorkload {
        let verdicts: Vec<Verdict> =
            assessment.verdicts.verdicts.iter().filter(|v| v.policy == policy.name).cloned().collect();
        TestedWorkload {
            team: team.to_string(),
            app: spec.name.clone(),
            applies: assessment.verdicts.applied.contains(&policy.name),
            outcome: verdicts.iter().map(|v| v.outcome).max().unwrap_or(Outcome::Allow),
            verdicts,
        }
    }
}

/// `canopy explain APP`: where the app's instances are and why, or why they wait.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    pub app: String,
    pub team: String,
    pub instances: Vec<InstancePlace>,
    /// What its placed instances cost per hour now.
    pub hourly_cost: Money,
    /// In words: what limits where it may go, why it is where it is, why some of it waits.
    pub reasons: Vec<String>,
    /// The same workload on each provider the residency rules leave.
    pub providers: Vec<ProviderRun>,
    pub verdicts: Vec<Verdict>,
    pub binding: Binding,
    /// Why it lost its portability, '' while it has it.
    pub portability: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstancePlace {
    pub instance: i32,
    pub state: String,
    pub place: Option<Place>,
    pub message: String,
}

/// "providers aws, azure; regions eu-west-1" for what a binding limits, `None` when nothing.
fn limits(binding: &Binding) -> Option<String> {
    let dimensions = [("providers", &binding.providers), ("regions", &binding.regions), ("zones", &binding.zones)];
    let limited: Vec<String> = dimensions
        .iter()
        .filter_map(|(name, list)| list.as_ref().map(|l| format!("{name} {}", l.join(", "))))
        .collect();
    (!limited.is_empty()).then(|| limited.join("; "))
}

impl Explanation {
    pub async fn new(store: &Store, buyable: &Buyable, app: &LiveSpec) -> Result<Explanation> {
        let (_, assessment) = assess_spec(store, buyable, app.team_id, &app.spec, None).await?;
        let binding = app.binding.clone().unwrap_or_default();
        let mut instances = Vec::new();
        let mut hourly_cost = 0;
        for task in store.task_places(app.app_id).await? {
            let place = match (&task.machine, &task.provider) {
                (Some(machine), Some(provider)) => {
                    let capacity = Resources::new(
                        task.capacity_milli_cpu.unwrap_or(0).max(0) as u64,
                        task.capacity_memory.unwrap_or(0).max(0) as u64,
                    );
                    let request = Resources::new(task.milli_cpu.max(0) as u64, task.memory.max(0) as u64);
                    let price = task.price_micros.unwrap_or(0).max(0) as u64;
                    let cost = canopy_core::policy::hourly_share(price, capacity, request);
                    hourly_cost += cost;
                    Some(Place {
                        machine: Some(machine.clone()),
                        provider: provider.clone(),
                        region: task.region.clone().unwrap_or_default(),
                        zone: task.zone.clone().unwrap_or_default(),
                        offering: task.offering.clone().unwrap_or_default(),
                        spot: task.spot.unwrap_or(false),
                        tasks: 1,
                        cost: Money(cost),
                    })
                }
                _ => None,
            };
            instances.push(InstancePlace { instance: task.instance, state: task.state, place, message: task.message });
        }
        let mut reasons = Vec::new();
        if !app.spec.placement.is_anywhere() {
            let own = app.spec.placement.constraints();
            let mut parts = Vec::new();
            for (name, list) in [("providers", &own.providers), ("regions", &own.regions), ("zones", &own.zones)] {
                if !list.is_empty() {
                    parts.push(format!("{name} {}", list.join(", ")));
                }
            }
            if !own.labels.is_empty() {
                let labels: Vec<String> = own.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                parts.push(format!("machine labels {}", labels.join(", ")));
            }
            reasons.push(format!("its spec's [placement] allows only {}", parts.join("; ")));
        }
        match limits(&binding) {
            Some(limits) => reasons.push(format!("the policies allow only {limits}")),
            None if assessment.verdicts.applied.is_empty() => reasons.push("no policy applies to it".to_string()),
            None => reasons
                .push(format!("the policies ({}) do not limit where it runs", assessment.verdicts.applied.join(", "))),
        }
        if !binding.spot {
            reasons.push("a policy keeps it off spot capacity".to_string());
        } else if binding.min_on_demand > 0 {
            reasons.push(format!("its first {} instances stay on on-demand capacity", binding.min_on_demand));
        }
        let placed: BTreeSet<&str> =
            instances.iter().filter_map(|i| i.place.as_ref()).map(|p| p.provider.as_str()).collect();
        if !placed.is_empty() {
            let cheapest = assessment.runs.iter().filter_map(|r| r.cost.map(|c| (c, r.provider.as_str()))).min();
            let here = placed.iter().copied().collect::<Vec<_>>().join(", ");
            reasons.push(match cheapest {
                Some((cost, provider)) if placed.contains(provider) => format!(
                    "it runs on {here}: placement takes the cheapest machine or offering that fits, and {provider} is \
                     the cheapest allowed provider for it now ({cost}/h)"
                ),
                Some((cost, provider)) => format!(
                    "it runs on {here}, where it was cheapest (or only possible) when placed; {provider} would be \
                     cheapest now ({cost}/h)"
                ),
                None => format!("it runs on {here}; no allowed provider could place it again now"),
            });
        }
        for instance in instances.iter().filter(|i| i.state == "pending") {
            let why = if instance.message.is_empty() { "waiting for placement" } else { &instance.message };
            reasons.push(format!("instance {} is pending: {why}", instance.instance));
        }
        reasons.extend(assessment.verdicts.with_outcome(Outcome::Refuse).map(|v| format!("refused: {v}")));
        if !app.portability.is_empty() {
            reasons.push(format!("it lost its portability: {}", app.portability));
        }
        Ok(Explanation {
            app: app.spec.name.clone(),
            team: app.team.clone(),
            instances,
            hourly_cost: Money(hourly_cost),
            reasons,
            providers: assessment.runs.clone(),
            verdicts: assessment.verdicts.verdicts.clone(),
            binding,
            portability: app.portability.clone(),
        })
    }
}
