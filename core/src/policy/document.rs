//! The policy document (`policy.toml`): parsed once, at the edge, into a [`PolicyDocument`]
//! that has been validated. As for the app spec, every error names the field it concerns
//! (`residency.allowed_providers[1]: unknown provider "gcp" ...`) and unknown fields are refused.

use crate::schedule::parse_micros;
use crate::spec::{MAX_INSTANCES, ProviderName, validate_name};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// One policy. It has no version: the store keeps the versions of a policy by its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub name: String,
    /// The workloads it applies to.
    pub scope: Scope,
    /// Hard (the default): a broken rule refuses the deploy and allowed places bind the
    /// scheduler. Soft: a broken rule only warns, and nothing is restricted.
    #[serde(default)]
    pub enforcement: Enforcement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residency: Option<Residency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portability: Option<Portability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concentration: Option<Concentration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<SpotRule>,
}

/// `scope = "org"`, `scope = { team = "payments" }` or `scope = { labels = { env = "prod" } }`
/// (every label must be on the workload with that value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Org,
    Team(String),
    Labels(BTreeMap<String, String>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Hard,
    Soft,
}

/// Where the workloads may run. Each list left empty says nothing; a denied provider or region
/// is excluded even when no allowed list is given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Residency {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_providers: Vec<ProviderName>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_providers: Vec<ProviderName>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_regions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_regions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_zones: Vec<String>,
}

/// A workload is accepted only if a dry run could place it on at least `min_providers`
/// providers (among those the policies allow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Portability {
    pub min_providers: u32,
}

/// At most `max_share_percent` of the team's spend (or capacity) on any one provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concentration {
    pub max_share_percent: u32,
    #[serde(default)]
    pub measure: Measure,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// Hourly cost.
    #[default]
    Spend,
    /// Requested milli-CPUs.
    Capacity,
}

/// The team's monthly budget: the one place a team's budget is set. Reports, the forecast
/// alert and the UI use the strictest budget of the policies scoped to the whole organisation
/// or to the team ([`team_budget`]); a label-scoped budget only guards deploys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub monthly: Money,
    /// POSTed (JSON) once each time the team's forecast for the month crosses the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// The budget that applies to the whole of team `team`: the smallest `[budget]` among the
/// policies scoped to the organisation or to that team (on a tie, the first policy's webhook).
pub fn team_budget<'a>(policies: &'a [PolicyDocument], team: &str) -> Option<&'a Budget> {
    policies
        .iter()
        .filter(|p| match &p.scope {
            Scope::Org => true,
            Scope::Team(name) => name == team,
            Scope::Labels(_) => false,
        })
        .filter_map(|p| p.budget.as_ref())
        .min_by_key(|b| b.monthly)
}

/// Which kinds of interruptible work may use spot capacity (a field left out has no opinion),
/// and how many of a service's instances must stay on on-demand capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpotRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<bool>,
    pub min_on_demand: u32,
}

/// An amount of money in micro-units (10^-6), written as a decimal string (`"2500.00"`) so it
/// is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub u64);

impl fmt::Display for Money {
    /// At least two decimals, more only when needed: exact, so a refusal never rounds a number
    /// onto the wrong side of a limit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, fraction) = (self.0 / 1_000_000, self.0 % 1_000_000);
        let digits = format!("{fraction:06}");
        let trimmed = digits.trim_end_matches('0');
        let shown = if trimmed.len() < 2 { &digits[..2] } else { trimmed };
        write!(f, "{whole}.{shown}")
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_micros(&text)
            .map(Money)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an amount (like \"2500.00\")")))
    }
}

/// A policy that could not be accepted, with the dotted path of the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

impl PolicyError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError { field: field.into(), message: message.into() }
    }
}

impl PolicyDocument {
    /// Parses and validates a `policy.toml`.
    pub fn from_toml(text: &str) -> Result<PolicyDocument, PolicyError> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| PolicyError::new("(document)", e.message().to_string()))?;
        let document: PolicyDocument = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "(document)".to_string() } else { path };
            PolicyError::new(field, e.inner().message().trim())
        })?;
        document.validate()?;
        Ok(document)
    }

    /// Parses and validates the JSON form of a policy (what the API accepts).
    pub fn from_json(bytes: &[u8]) -> Result<PolicyDocument, PolicyError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let document: PolicyDocument = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "(document)".to_string() } else { path };
            PolicyError::new(field, e.inner().to_string())
        })?;
        deserializer.end().map_err(|e| PolicyError::new("(document)", e.to_string()))?;
        document.validate()?;
        Ok(document)
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        validate_name("name", &self.name).map_err(|e| PolicyError::new(e.field, e.message))?;
        match &self.scope {
            Scope::Org => {}
            Scope::Team(team) => validate_name("scope.team", team).map_err(|e| PolicyError::new(e.field, e.message))?,
            Scope::Labels(labels) => {
                if labels.is_empty() {
                    return Err(PolicyError::new(
                        "scope.labels",
                        "must name at least one label (or use scope = \"org\")",
                    ));
                }
                for key in labels.keys() {
                    if key.is_empty() || key.trim() != key {
                        let message = format!("label name {key:?} must not be empty or start or end with whitespace");
                        return Err(PolicyError::new(format!("scope.labels.{key}"), message));
                    }
                }
            }
        }
        let rules = [
            self.residency.is_some(),
            self.portability.is_some(),
            self.concentration.is_some(),
            self.budget.is_some(),
            self.spot.is_some(),
        ];
        if !rules.contains(&true) {
            return Err(PolicyError::new(
                "(document)",
                "a policy needs at least one rule: [residency], [portability], [concentration], [budget] or [spot]",
            ));
        }
        if let Some(residency) = &self.residency {
            residency.validate()?;
        }
        // How many providers the residency rule leaves, for the rules that need several.
        let providers = self.residency.as_ref().map_or(ProviderName::ALL.len(), |r| r.providers().len()) as u32;
        if let Some(portability) = &self.portability {
            if portability.min_providers == 0 {
                return Err(PolicyError::new("portability.min_providers", "must be at least 1"));
            }
            if portability.min_providers > providers {
                let message = format!(
                    "{} providers required but only {providers} {} allowed",
                    portability.min_providers,
                    if providers == 1 { "is" } else { "are" }
                );
                return Err(PolicyError::new("portability.min_providers", message));
            }
        }
        if let Some(concentration) = &self.concentration {
            let percent = concentration.max_share_percent;
            if !(1..=99).contains(&percent) {
                return Err(PolicyError::new("concentration.max_share_percent", "must be between 1 and 99"));
            }
            // Spread evenly over every allowed provider, each holds 100/n percent: a lower
            // limit could never be met.
            if percent * providers < 100 {
                let message = format!(
                    "{percent}% can never be met with {providers} allowed provider{}: at least {}% is needed",
                    if providers == 1 { "" } else { "s" },
                    100_u32.div_ceil(providers)
                );
                return Err(PolicyError::new("concentration.max_share_percent", message));
            }
        }
        if let Some(budget) = &self.budget {
            if budget.monthly.0 == 0 {
                return Err(PolicyError::new("budget.monthly", "must be more than 0"));
            }
            if let Some(url) = &budget.webhook_url {
                let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
                if rest.is_none_or(|host| host.is_empty() || host.starts_with('/') || url.contains(char::is_whitespace))
                {
                    return Err(PolicyError::new("budget.webhook_url", "must be an http:// or https:// URL"));
                }
            }
        }
        if let Some(spot) = &self.spot
            && spot.min_on_demand > MAX_INSTANCES
        {
            return Err(PolicyError::new("spot.min_on_demand", format!("must be at most {MAX_INSTANCES}")));
        }
        Ok(())
    }
}

impl Residency {
    /// The providers this rule leaves (every provider when it names none).
    pub fn providers(&self) -> Vec<ProviderName> {
        ProviderName::ALL
            .into_iter()
            .filter(|p| self.allowed_providers.is_empty() || self.allowed_providers.contains(p))
            .filter(|p| !self.denied_providers.contains(p))
            .collect()
    }

    fn validate(&self) -> Result<(), PolicyError> {
        for (field, list) in
            [("allowed_providers", &self.allowed_providers), ("denied_providers", &self.denied_providers)]
        {
            for (index, provider) in list.iter().enumerate() {
                if list[..index].contains(provider) {
                    let message = format!("provider {:?} is listed twice", provider.as_str());
                    return Err(PolicyError::new(format!("residency.{field}[{index}]"), message));
                }
            }
        }
        validate_names("residency.allowed_regions", "region", &self.allowed_regions)?;
        validate_names("residency.denied_regions", "region", &self.denied_regions)?;
        validate_names("residency.allowed_zones", "zone", &self.allowed_zones)?;
        for (index, provider) in self.denied_providers.iter().enumerate() {
            if self.allowed_providers.contains(provider) {
                let message = format!("provider {:?} is also in allowed_providers", provider.as_str());
                return Err(PolicyError::new(format!("residency.denied_providers[{index}]"), message));
            }
        }
        for (index, region) in self.denied_regions.iter().enumerate() {
            if self.allowed_regions.contains(region) {
                let message = format!("region {region:?} is also in allowed_regions");
                return Err(PolicyError::new(format!("residency.denied_regions[{index}]"), message));
            }
        }
        if self.providers().is_empty() {
            return Err(PolicyError::new("residency.denied_providers", "every provider is denied"));
        }
        Ok(())
    }
}

/// Region and zone names are the provider's own, so only what can never match one is refused.
fn validate_names(field: &str, what: &str, names: &[String]) -> Result<(), PolicyError> {
    for (index, name) in names.iter().enumerate() {
        let field = format!("{field}[{index}]");
        if name.is_empty() || name.trim() != name {
            let message = format!("{what} {name:?} must not be empty or start or end with whitespace");
            return Err(PolicyError::new(field, message));
        }
        if names[..index].contains(name) {
            return Err(PolicyError::new(field, format!("{what} {name:?} is listed twice")));
        }
    }
    Ok(())
}
