//! Portability policies: what an organisation allows its workloads to do, written as files.
//!
//! A [`PolicyDocument`] (`policy.toml`) has a name, a scope (the whole organisation, one team,
//! or the workloads carrying some labels), an enforcement (`hard` refuses, `soft` only warns)
//! and rules: residency (allowed or denied providers, regions, zones), portability (the
//! workload must be placeable on at least N providers), concentration (at most X% of a team's
//! spend or capacity on one provider), a monthly budget and spot use. [`evaluate`] applies every
//! policy whose scope matches a [`Workload`] and answers with [`Verdicts`]: the scheduler
//! [`Policy`](crate::schedule::Policy) the workload must be placed under (the intersection of
//! what the hard policies allow, and the strictest spot rules) and one [`Verdict`] per rule,
//! each naming the policy, the rule and the numbers behind its outcome.
//!
//! Nothing here does I/O or reads a clock. The control service gives what it knows in a
//! [`Context`] and drives a deploy like this:
//! 1. load the team's policies and call [`places`] for where the workload may run at all;
//! 2. dry-run the workload once per provider those places allow: `canopy_core::schedule::schedule`
//!    with a snapshot whose catalog is filtered to that provider (and its existing machines),
//!    under `places.to_policy()` and with each task's constraints narrowed by
//!    `places.constrain`; a provider where every task is placed or provisioned goes into
//!    `Context::dry_runs` with the workload's hourly cost there;
//! 3. fill the rest of the context from the store (month-to-date spend, run rate and capacity
//!    per provider, hours left in the month, known regions) and call [`evaluate`];
//! 4. refuse the deploy when [`Verdicts::refused`], showing every refusal; otherwise schedule
//!    it for real under `Verdicts::policy` (plus the caller's quotas), with every task's
//!    constraints narrowed by `Verdicts::places.constrain` (the scheduler applies a `Policy`
//!    only to the machines it buys; constraints also bind existing machines), and
//!    `Verdicts::min_on_demand` of a service's instances marked not interruptible.
//!
//! [`assess`] does steps 1 to 4 for one workload given a snapshot of the pool, and says what
//! the verdicts bind the workload to ([`Binding`], which placement applies to its tasks).
//!
//! Policies are versionless here: storing versions, the audit log, the API and the CLI belong
//! to the control service.

mod assess;
mod document;
mod evaluate;
mod places;

pub use assess::{Assessment, Binding, Placed, ProviderRun, assess, hourly_share};
pub use document::{
    Budget, Concentration, Enforcement, Measure, Money, PolicyDocument, PolicyError, Portability, Residency, Scope,
    SpotRule, team_budget,
};
pub use evaluate::{Context, Outcome, Rule, Verdict, Verdicts, Workload, applies, evaluate, places};
pub use places::{Allowed, Places};

#[cfg(test)]
mod tests;
