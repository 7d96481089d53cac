//! Allowed places as exact sets. The scheduler's `Policy` and `Constraints` read an empty list
//! as "anywhere", so they cannot say "nowhere"; these sets can, and are turned into the
//! scheduler's forms only when something is left.

use super::document::Residency;
use crate::schedule::{Constraints, Policy};
use crate::spec::ProviderName;
use std::collections::BTreeSet;

/// The values of one dimension (providers, regions or zones) that may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    Any,
    /// Only these; empty means nowhere.
    Only(BTreeSet<String>),
}

impl Allowed {
    /// The scheduler's reading of a list: empty is any.
    pub fn from_list(list: &[String]) -> Allowed {
        if list.is_empty() { Allowed::Any } else { Allowed::Only(list.iter().cloned().collect()) }
    }

    pub fn intersect(&self, other: &Allowed) -> Allowed {
        match (self, other) {
            (Allowed::Any, other) | (other, Allowed::Any) => other.clone(),
            (Allowed::Only(a), Allowed::Only(b)) => Allowed::Only(a.intersection(b).cloned().collect()),
        }
    }

    pub fn allows(&self, value: &str) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::Only(set) => set.contains(value),
        }
    }

    pub fn is_nothing(&self) -> bool {
        matches!(self, Allowed::Only(set) if set.is_empty())
    }

    /// True when everything `self` allows, `other` allows too.
    pub fn is_within(&self, other: &Allowed) -> bool {
        match (self, other) {
            (_, Allowed::Any) => true,
            (Allowed::Any, Allowed::Only(_)) => false,
            (Allowed::Only(a), Allowed::Only(b)) => a.is_subset(b),
        }
    }

    /// The scheduler's list: empty for any (callers check `is_nothing` first).
    fn to_list(&self) -> Vec<String> {
        match self {
            Allowed::Any => Vec::new(),
            Allowed::Only(set) => set.iter().cloned().collect(),
        }
    }
}

/// "aws, azure", or "none" for an empty set.
pub(super) fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() { "none".to_string() } else { set.iter().map(String::as_str).collect::<Vec<_>>().join(", ") }
}

/// Where work may run: the intersection of every hard residency rule that applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Places {
    pub providers: Allowed,
    pub regions: Allowed,
    pub zones: Allowed,
}

impl Default for Places {
    fn default() -> Self {
        Places { providers: Allowed::Any, regions: Allowed::Any, zones: Allowed::Any }
    }
}

impl Places {
    /// What one residency rule allows. A denied region is resolved against `known_regions`
    /// (every region of the catalog and of existing machines), since the scheduler only takes
    /// allowed lists.
    pub fn of(residency: &Residency, known_regions: &BTreeSet<String>) -> Places {
        let providers = if residency.allowed_providers.is_empty() && residency.denied_providers.is_empty() {
            Allowed::Any
        } else {
            Allowed::Only(residency.providers().into_iter().map(|p| p.as_str().to_string()).collect())
        };
        let mut regions = Allowed::from_list(&residency.allowed_regions);
        if !residency.denied_regions.is_empty() {
            let left = known_regions.iter().filter(|r| !residency.denied_regions.contains(r)).cloned().collect();
            regions = regions.intersect(&Allowed::Only(left));
        }
        Places { providers, regions, zones: Allowed::from_list(&residency.allowed_zones) }
    }

    /// A workload's own placement constraints as places.
    pub fn of_constraints(constraints: &Constraints) -> Places {
        Places {
            providers: Allowed::from_list(&constraints.providers),
            regions: Allowed::from_list(&constraints.regions),
            zones: Allowed::from_list(&constraints.zones),
        }
    }

    pub fn intersect(&self, other: &Places) -> Places {
        Places {
            providers: self.providers.intersect(&other.providers),
            regions: self.regions.intersect(&other.regions),
            zones: self.zones.intersect(&other.zones),
        }
    }

    /// The dimensions with nothing left, by name.
    pub fn empty_dimensions(&self) -> Vec<&'static str> {
        [("providers", &self.providers), ("regions", &self.regions), ("zones", &self.zones)]
            .into_iter()
            .filter(|(_, allowed)| allowed.is_nothing())
            .map(|(name, _)| name)
            .collect()
    }

    pub fn is_nowhere(&self) -> bool {
        !self.empty_dimensions().is_empty()
    }

    /// The providers left, as the provider names Canopy knows.
    pub fn provider_names(&self) -> Vec<&'static str> {
        ProviderName::ALL.into_iter().map(ProviderName::as_str).filter(|p| self.providers.allows(p)).collect()
    }

    /// The scheduler's `Policy` for these places (spot and quotas left at their defaults), or
    /// `None` when nothing is left.
    pub fn to_policy(&self) -> Option<Policy> {
        if self.is_nowhere() {
            return None;
        }
        Some(Policy {
            allowed_providers: self.providers.to_list(),
            allowed_regions: self.regions.to_list(),
            ..Policy::default()
        })
    }

    /// A task's constraints narrowed to these places, or `None` when nothing is left. The
    /// control service must apply this to every task as well as passing the `Policy`: the
    /// scheduler applies `Policy` only to what it buys, while constraints also bind machines
    /// that already exist.
    pub fn constrain(&self, constraints: &Constraints) -> Option<Constraints> {
        let both = self.intersect(&Places::of_constraints(constraints));
        if both.is_nowhere() {
            return None;
        }
        Some(Constraints {
            providers: both.providers.to_list(),
            regions: both.regions.to_list(),
            zones: both.zones.to_list(),
            ..constraints.clone()
        })
    }
}
