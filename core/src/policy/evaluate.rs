//! Evaluation: which policies apply to a workload, what they allow, and a verdict per rule.

use super::document::{Enforcement, Measure, Money, PolicyDocument, Scope};
use super::places::{Allowed, Places, list};
use crate::schedule::{Constraints, MicrosPerHour, Policy, SpotPolicy, WorkloadKind};
use crate::spec::AppSpec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What is being deployed, as the policies see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub team: String,
    /// The workload's own labels (what `scope.labels` matches), not machine labels.
    pub labels: BTreeMap<String, String>,
    pub kind: WorkloadKind,
    pub interruptible: bool,
    /// Instances of a service, or the parallelism of a job.
    pub instances: u32,
    /// Requested milli-CPUs of all instances together (the `capacity` measure).
    pub milli_cpu: u64,
    /// The workload's own placement limits.
    pub constraints: Constraints,
}

impl Workload {
    pub fn from_spec(spec: &AppSpec, team: &str, labels: BTreeMap<String, String>) -> Workload {
        let instances = spec.job.as_ref().map_or(spec.instances, |job| job.parallelism);
        Workload {
            name: spec.name.clone(),
            team: team.to_string(),
            labels,
            kind: if spec.job.is_some() { WorkloadKind::Batch } else { WorkloadKind::Service },
            interruptible: spec.interruptible,
            instances,
            milli_cpu: spec.resources.cpu * u64::from(instances),
            constraints: spec.placement.constraints(),
        }
    }
}

/// What the store knows about the workload's team and what the dry runs found, all given by the
/// caller: nothing here reads a clock or a database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The team's spend so far this month, in micro-units.
    pub month_to_date: u64,
    /// The team's current hourly cost per provider.
    pub run_rate: BTreeMap<String, MicrosPerHour>,
    /// The team's requested milli-CPUs per provider (the `capacity` measure).
    pub capacity: BTreeMap<String, u64>,
    /// The providers on which a dry run placed every instance of the workload, with its hourly
    /// cost there. A provider absent here could not place it.
    pub dry_runs: BTreeMap<String, MicrosPerHour>,
    /// Hours left in the month (the caller may count part of the current day).
    pub hours_left: u64,
    /// Every region of the catalog and of existing machines: what a denied region is taken from.
    pub known_regions: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Residency,
    Portability,
    Concentration,
    Budget,
    Spot,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Residency => "residency",
            Rule::Portability => "portability",
            Rule::Concentration => "concentration",
            Rule::Budget => "budget",
            Rule::Spot => "spot",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Warn,
    Refuse,
}

/// One rule of one policy on one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub policy: String,
    pub rule: Rule,
    pub outcome: Outcome,
    /// With the numbers: "team payments: 71% of spend would be on aws, limit 60%".
    pub message: String,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy {} ({}): {}", self.policy, self.rule.as_str(), self.message)
    }
}

/// Everything the policies say about one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdicts {
    /// The names of the policies that apply, in the order given.
    pub applied: Vec<String>,
    /// Where the workload may run: every hard residency rule, less the providers a hard
    /// concentration or budget rule excludes.
    pub places: Places,
    /// The scheduler's policy for the workload (quotas are the caller's to add), or `None` when
    /// no place is left (a refusal then says why). Pass it with every task's constraints
    /// narrowed by `places.constrain`.
    pub policy: Option<Policy>,
    /// Instances of a service that must not go to spot (the caller marks that many of them not
    /// interruptible).
    pub min_on_demand: u32,
    /// By rule, then by policy in the order given.
    pub verdicts: Vec<Verdict>,
}

impl Verdicts {
    pub fn refused(&self) -> bool {
        self.verdicts.iter().any(|v| v.outcome == Outcome::Refuse)
    }

    pub fn with_outcome(&self, outcome: Outcome) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(move |v| v.outcome == outcome)
    }
}

/// Whether `policy` applies to `workload`.
pub fn applies(policy: &PolicyDocument, workload: &Workload) -> bool {
    match &policy.scope {
        Scope::Org => true,
        Scope::Team(team) => *team == workload.team,
        Scope::Labels(labels) => labels.iter().all(|(key, value)| workload.labels.get(key) == Some(value)),
    }
}

/// Where the hard residency rules that apply let `workload` run: what to dry-run against,
/// one provider at a time, before calling [`evaluate`].
pub fn places(policies: &[PolicyDocument], workload: &Workload, known_regions: &BTreeSet<String>) -> Places {
    policies
        .iter()
        .filter(|p| p.enforcement == Enforcement::Hard && applies(p, workload))
        .filter_map(|p| p.residency.as_ref())
        .fold(Places::default(), |places, residency| places.intersect(&Places::of(residency, known_regions)))
}

/// Applies `policies` to `workload` given what the store knows (`context`).
pub fn evaluate(policies: &[PolicyDocument], workload: &Workload, context: &Context) -> Verdicts {
    let applied: Vec<&PolicyDocument> = policies.iter().filter(|p| applies(p, workload)).collect();
    let mut evaluation = Evaluation { workload, context, places: Places::default(), verdicts: Vec::new() };
    evaluation.residency(&applied);
    // Portability is about where the workload could go, before any preference below.
    let candidates = evaluation.candidates();
    for policy in &applied {
        if let Some(portability) = &policy.portability {
            evaluation.portability(policy, portability.min_providers, &candidates);
        }
    }
    for policy in &applied {
        if let Some(concentration) = &policy.concentration {
            evaluation.concentration(policy, concentration.max_share_percent, concentration.measure);
        }
    }
    for policy in &applied {
        if let Some(budget) = &policy.budget {
            evaluation.budget(policy, budget.monthly);
        }
    }
    let (spot, min_on_demand) = evaluation.spot(&applied);
    let Evaluation { places, mut verdicts, .. } = evaluation;
    // Stable: within a rule, the policies stay in the order given.
    verdicts.sort_by_key(|v| v.rule);
    Verdicts {
        applied: applied.iter().map(|p| p.name.clone()).collect(),
        policy: places.to_policy().map(|policy| Policy { spot, ..policy }),
        places,
        min_on_demand,
        verdicts,
    }
}

struct Evaluation<'a> {
    workload: &'a Workload,
    context: &'a Context,
    places: Places,
    verdicts: Vec<Verdict>,
}

/// What breaking a rule of `policy` leads to.
fn broken(policy: &PolicyDocument) -> Outcome {
    match policy.enforcement {
        Enforcement::Hard => Outcome::Refuse,
        Enforcement::Soft => Outcome::Warn,
    }
}

fn show(allowed: &Allowed) -> String {
    match allowed {
        Allowed::Any => "any".to_string(),
        Allowed::Only(set) => list(set),
    }
}

fn dimensions(places: &Places) -> [(&'static str, &Allowed); 3] {
    [("providers", &places.providers), ("regions", &places.regions), ("zones", &places.zones)]
}

/// "providers aws, azure; regions eu-west-1" (only what is limited).
fn describe(places: &Places) -> String {
    let limited: Vec<String> = dimensions(places)
        .into_iter()
        .filter(|(_, allowed)| **allowed != Allowed::Any)
        .map(|(name, allowed)| format!("{name} {}", show(allowed)))
        .collect();
    if limited.is_empty() { "anywhere".to_string() } else { limited.join("; ") }
}

/// A share as a percentage rounded up to a tenth, so it is never shown below what it is.
fn percent(part: u128, total: u128) -> String {
    let tenths = (part * 1000).div_ceil(total);
    if tenths.is_multiple_of(10) { format!("{}%", tenths / 10) } else { format!("{}.{}%", tenths / 10, tenths % 10) }
}

impl Evaluation<'_> {
    fn push(&mut self, policy: &PolicyDocument, rule: Rule, outcome: Outcome, message: String) {
        self.verdicts.push(Verdict { policy: policy.name.clone(), rule, outcome, message });
    }

    /// Providers where the workload could go: a dry run placed it there and the places allow it.
    fn candidates(&self) -> BTreeMap<String, MicrosPerHour> {
        let providers = &self.places.providers;
        self.context.dry_runs.iter().filter(|(p, _)| providers.allows(p)).map(|(p, c)| (p.clone(), *c)).collect()
    }

    /// Keeps the workload off `providers` (a hard rule's exclusion).
    fn exclude(&mut self, providers: &BTreeSet<String>) {
        let left = self.places.provider_names().into_iter().filter(|p| !providers.contains(*p));
        self.places.providers = Allowed::Only(left.map(str::to_string).collect());
    }

    fn residency(&mut self, applied: &[&PolicyDocument]) {
        let own = Places::of_constraints(&self.workload.constraints);
        let mut narrowed_by: Vec<&str> = Vec::new();
        let hard = applied.iter().filter(|p| p.enforcement == Enforcement::Hard);
        let soft = applied.iter().filter(|p| p.enforcement == Enforcement::Soft);
        for policy in hard.chain(soft) {
            let Some(residency) = &policy.residency else { continue };
            let mine = Places::of(residency, &self.context.known_regions);
            if let Some((name, asked, allowed)) = dimensions(&own)
                .into_iter()
                .zip(dimensions(&mine))
                .find(|((_, asked), (_, allowed))| asked.intersect(allowed).is_nothing())
                .map(|((name, asked), (_, allowed))| (name, show(asked), show(allowed)))
            {
                let message = format!("the workload asks for {name} {asked}; the policy allows {allowed}");
                self.push(policy, Rule::Residency, broken(policy), message);
                // Refused or not, a hard rule still binds: the places never grow past it.
                if policy.enforcement == Enforcement::Hard {
                    self.places = self.places.intersect(&mine);
                    narrowed_by.push(&policy.name);
                }
                continue;
            }
            if policy.enforcement == Enforcement::Soft {
                self.soft_residency(policy, &mine, &own);
                continue;
            }
            let before = self.places.intersect(&own);
            let after = before.intersect(&mine);
            if let Some((name, left)) = dimensions(&after)
                .into_iter()
                .zip(dimensions(&before))
                .find(|((_, after), _)| after.is_nothing())
                .map(|((name, _), (_, before))| (name, show(before)))
            {
                let allowed = show(dimensions(&mine).into_iter().find(|(n, _)| *n == name).map(|(_, a)| a).expect("3"));
                let message = format!(
                    "no {name} left: the policy allows {allowed}, the workload and {} allow {left}",
                    narrowed_by.join(", ")
                );
                self.push(policy, Rule::Residency, Outcome::Refuse, message);
            } else {
                let message = format!("the workload may run in {}", describe(&mine));
                self.push(policy, Rule::Residency, Outcome::Allow, message);
            }
            self.places = self.places.intersect(&mine);
            narrowed_by.push(&policy.name);
        }
    }

    /// A soft residency rule binds nothing: it warns when the workload could be placed outside it.
    fn soft_residency(&mut self, policy: &PolicyDocument, mine: &Places, own: &Places) {
        let effective = self.places.intersect(own);
        let outside: Vec<String> = dimensions(&effective)
            .into_iter()
            .zip(dimensions(mine))
            .filter(|((_, could), (_, allowed))| !could.is_within(allowed))
            .map(|((name, could), (_, allowed))| match (could, allowed) {
                (Allowed::Only(could), Allowed::Only(allowed)) => {
                    let outside = could.difference(allowed).cloned().collect();
                    format!("{name} {} (allowed: {})", list(&outside), list(allowed))
                }
                _ => format!("any of its {name} (allowed: {})", show(allowed)),
            })
            .collect();
        if outside.is_empty() {
            let message = format!("the workload stays within {}", describe(mine));
            self.push(policy, Rule::Residency, Outcome::Allow, message);
        } else {
            let message = format!("the workload may be placed outside the policy: {}", outside.join("; "));
            self.push(policy, Rule::Residency, Outcome::Warn, message);
        }
    }

    fn portability(&mut self, policy: &PolicyDocument, required: u32, candidates: &BTreeMap<String, MicrosPerHour>) {
        let found = candidates.len() as u32;
        let providers: BTreeSet<String> = candidates.keys().cloned().collect();
        let message = format!(
            "the workload could be placed on {found} provider{} ({}), at least {required} required",
            if found == 1 { "" } else { "s" },
            list(&providers)
        );
        let outcome = if found >= required { Outcome::Allow } else { broken(policy) };
        self.push(policy, Rule::Portability, outcome, message);
    }

    fn concentration(&mut self, policy: &PolicyDocument, limit: u32, measure: Measure) {
        let team = &self.workload.team;
        let (current, what) = match measure {
            Measure::Spend => (&self.context.run_rate, "spend"),
            Measure::Capacity => (&self.context.capacity, "capacity (cpu)"),
        };
        let total: u128 = current.values().map(|&v| u128::from(v)).sum();
        if total == 0 {
            let message = format!("team {team} has no {what} yet: any first placement is all on one provider");
            return self.push(policy, Rule::Concentration, Outcome::Allow, message);
        }
        // The share of the provider it goes to, for each place it could go; the other
        // providers' shares only fall.
        let mut breaching = Vec::new();
        let mut within = Vec::new();
        for (provider, cost) in self.candidates() {
            let added = u128::from(match measure {
                Measure::Spend => cost,
                Measure::Capacity => self.workload.milli_cpu,
            });
            let part = u128::from(current.get(&provider).copied().unwrap_or(0)) + added;
            let share = (percent(part, total + added), provider);
            if part * 100 > u128::from(limit) * (total + added) { breaching.push(share) } else { within.push(share) }
        }
        // "71% of spend would be on aws (or 65% on azure)".
        let shares = |shares: &[(String, String)]| {
            let mut shares = shares.iter();
            let (share, provider) = shares.next().expect("not empty");
            let rest: Vec<String> = shares.map(|(share, provider)| format!("{share} on {provider}")).collect();
            let first = format!("{share} of {what} would be on {provider}");
            if rest.is_empty() { first } else { format!("{first} (or {})", rest.join(", ")) }
        };
        let (outcome, message) = match (breaching.is_empty(), within.is_empty()) {
            (true, true) => (Outcome::Allow, format!("team {team}: no provider could place the workload")),
            (true, false) => (Outcome::Allow, format!("team {team}: {}, limit {limit}%", shares(&within))),
            (false, true) => (broken(policy), format!("team {team}: {}, limit {limit}%", shares(&breaching))),
            (false, false) => {
                let elsewhere: Vec<String> = within.iter().map(|(share, p)| format!("{share} on {p}")).collect();
                let message =
                    format!("team {team}: {}, limit {limit}%; {} instead", shares(&breaching), elsewhere.join(", "));
                if policy.enforcement == Enforcement::Hard {
                    self.exclude(&breaching.iter().map(|(_, p)| p.clone()).collect());
                    (Outcome::Allow, format!("{message}: the workload goes there"))
                } else {
                    (Outcome::Warn, message)
                }
            }
        };
        self.push(policy, Rule::Concentration, outcome, message);
    }

    fn budget(&mut self, policy: &PolicyDocument, monthly: Money) {
        let team = &self.workload.team;
        let running: u128 = self.context.run_rate.values().map(|&v| u128::from(v)).sum();
        let hours = u128::from(self.context.hours_left);
        let forecast = |added: MicrosPerHour| {
            let micros = u128::from(self.context.month_to_date) + (running + u128::from(added)) * hours;
            Money(u64::try_from(micros).unwrap_or(u64::MAX))
        };
        let candidates = self.candidates();
        // The scheduler buys the cheapest it can, so the cheapest place is the forecast; a hard
        // budget keeps the workload off any place that would exceed it.
        let cheapest = candidates.iter().min_by_key(|(provider, cost)| (**cost, (*provider).clone()));
        let (added, on) = cheapest.map_or((0, String::new()), |(p, c)| (*c, format!(" on {p}")));
        let spend = forecast(added);
        let details = format!(
            "month to date {}, then {}/h running + {}/h for this workload{on} over {} h",
            Money(self.context.month_to_date),
            Money(u64::try_from(running).unwrap_or(u64::MAX)),
            Money(added),
            self.context.hours_left
        );
        if spend > monthly {
            let message = format!(
                "team {team}: forecast spend this month {spend} would exceed the budget of {monthly} ({details})"
            );
            return self.push(policy, Rule::Budget, broken(policy), message);
        }
        let mut message =
            format!("team {team}: forecast spend this month {spend} of a budget of {monthly} ({details})");
        let over: BTreeSet<String> =
            candidates.iter().filter(|(_, c)| forecast(**c) > monthly).map(|(p, _)| p.clone()).collect();
        if !over.is_empty() && policy.enforcement == Enforcement::Hard {
            message.push_str(&format!("; not on {}, which would exceed it", list(&over)));
            self.exclude(&over);
        }
        self.push(policy, Rule::Budget, Outcome::Allow, message);
    }

    /// The combined spot policy of the hard rules (a kind may use spot unless one of them says
    /// no) and the largest on-demand minimum; a verdict per rule. Spot rules never refuse: work
    /// kept off spot runs on on-demand capacity.
    fn spot(&mut self, applied: &[&PolicyDocument]) -> (SpotPolicy, u32) {
        let rules: Vec<(&PolicyDocument, _)> = applied.iter().filter_map(|p| p.spot.map(|s| (*p, s))).collect();
        let hard = || rules.iter().filter(|(p, _)| p.enforcement == Enforcement::Hard).map(|(_, s)| s);
        let combine = |opinions: Vec<Option<bool>>, default: bool| {
            !opinions.contains(&Some(false)) && (opinions.contains(&Some(true)) || default)
        };
        let default = SpotPolicy::default();
        let spot = SpotPolicy {
            service: combine(hard().map(|s| s.services).collect(), default.service),
            batch: combine(hard().map(|s| s.batch).collect(), default.batch),
        };
        let min_on_demand = match self.workload.kind {
            WorkloadKind::Service => hard().map(|s| s.min_on_demand).max().unwrap_or(0),
            WorkloadKind::Batch => 0,
        };
        let (kind, instances) = match self.workload.kind {
            WorkloadKind::Service => ("services", self.workload.instances),
            WorkloadKind::Batch => ("batch jobs", self.workload.instances),
        };
        for (policy, rule) in rules {
            let (opinion, default) = match self.workload.kind {
                WorkloadKind::Service => (rule.services, default.service),
                WorkloadKind::Batch => (rule.batch, default.batch),
            };
            let (outcome, message) = if !self.workload.interruptible {
                (Outcome::Allow, "the workload is not interruptible: it runs on on-demand capacity".to_string())
            } else if !opinion.unwrap_or(default) {
                match policy.enforcement {
                    Enforcement::Hard => {
                        (Outcome::Allow, format!("{kind} may not use spot: the workload runs on on-demand capacity"))
                    }
                    Enforcement::Soft => (Outcome::Warn, format!("{kind} should not use spot, and the workload may")),
                }
            } else if self.workload.kind == WorkloadKind::Service && rule.min_on_demand > 0 {
                let kept = rule.min_on_demand.min(instances);
                let message = format!(
                    "{kept} of the workload's {instances} instances run on on-demand capacity (at least {} required)",
                    rule.min_on_demand
                );
                (Outcome::Allow, message)
            } else {
                (Outcome::Allow, format!("{kind} may use spot"))
            };
            self.push(policy, Rule::Spot, outcome, message);
        }
        (spot, min_on_demand)
    }
}
