//! Placement policy as plain data: which providers and regions may be used, which kinds of
//! work may run on spot capacity, and per-provider quotas.
//!
//! This is the scheduler's input, not the policy language: parsing and evaluating
//! human-written policies is another module's job, which produces one of these.

use super::model::{TaskAsk, WorkloadKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Providers that may be bought from; empty means all.
    pub allowed_providers: Vec<String>,
    /// Regions that may be bought in; empty means all.
    pub allowed_regions: Vec<String>,
    pub spot: SpotPolicy,
    /// Per provider; a provider absent here has no quota.
    pub quotas: BTreeMap<String, Quota>,
}

/// Which kinds of interruptible work may go to spot. Non-interruptible work never does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpotPolicy {
    pub service: bool,
    pub batch: bool,
}

impl Default for SpotPolicy {
    fn default() -> Self {
        SpotPolicy { service: false, batch: true }
    }
}

/// Limits on what one provider may hold at once (existing machines count against them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Quota {
    pub max_machines: Option<u32>,
    pub max_milli_cpu: Option<u64>,
}

impl Policy {
    pub fn allows_provider(&self, provider: &str) -> bool {
        self.allowed_providers.is_empty() || self.allowed_providers.iter().any(|p| p == provider)
    }

    pub fn allows_region(&self, region: &str) -> bool {
        self.allowed_regions.is_empty() || self.allowed_regions.iter().any(|r| r == region)
    }

    /// Spot is for interruptible work of a kind the policy allows on spot.
    pub fn allows_spot(&self, task: &TaskAsk) -> bool {
        task.interruptible
            && match task.kind {
                WorkloadKind::Service => self.spot.service,
                WorkloadKind::Batch => self.spot.batch,
            }
    }
}
