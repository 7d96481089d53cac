//! Explanations: what a task costs where it was put, and what it would have cost on each other
//! provider (the next-best one named), so a person can see why the scheduler chose.
//!
//! A task's cost on a machine is its share of that machine's price by its dominant resource
//! (the rule finance reports use to allocate a machine's cost). For providers where it did not
//! go, the cheapest such share over their existing open machines and their catalog offerings
//! is reported. This is computed on demand for the placements a person asks about; the
//! scheduler itself never needs it.

use super::model::{MachineState, MicrosPerHour, Snapshot, TaskAsk};
use crate::resources::Resources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCost {
    pub provider: String,
    /// The task's share of the hourly price of the best machine or offering found there.
    pub cost: MicrosPerHour,
    /// The machine id or instance type that share is of.
    pub on: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub task: uuid::Uuid,
    /// Where it went and its share there, when the place is known.
    pub chosen: Option<ProviderCost>,
    /// The cheapest other provider, if any could hold it.
    pub next_best: Option<ProviderCost>,
    /// The cheapest share per provider (including the chosen one), by provider name.
    pub by_provider: Vec<ProviderCost>,
}

/// Explains `task` placed on `provider`'s machine or instance type `on` at hourly `price` with
/// `capacity` (pass the plan's placement or provision).
pub fn explain(
    snapshot: &Snapshot,
    task: &TaskAsk,
    placed: Option<(&str, &str, Resources, MicrosPerHour)>,
) -> Explanation {
    let offer = |provider: &str,
                 on: String,
                 capacity: Resources,
                 price: MicrosPerHour,
                 best: &mut BTreeMap<String, ProviderCost>| {
        let Some(cost) = share(task.resources, capacity, price) else {
            return;
        };
        if best.get(provider).is_none_or(|current| cost < current.cost) {
            best.insert(provider.to_string(), ProviderCost { provider: provider.to_string(), cost, on });
        }
    };
    let mut owned: BTreeMap<String, ProviderCost> = BTreeMap::new();
    for machine in &snapshot.machines {
        if machine.state != MachineState::Draining
            && machine.free().fits(&task.resources)
            && machine.free_gpus() >= task.gpus
        {
            offer(&machine.provider, machine.id.to_string(), machine.capacity, machine.price, &mut owned);
        }
    }
    for offering in &snapshot.catalog.offerings {
        if offering.gpus >= task.gpus
            && snapshot.policy.allows_provider(&offering.provider)
            && snapshot.policy.allows_region(&offering.region)
        {
            let price = if snapshot.policy.allows_spot(task) {
                offering.price_spot.unwrap_or(offering.price_on_demand).min(offering.price_on_demand)
            } else {
                offering.price_on_demand
            };
            offer(&offering.provider, offering.instance_type.clone(), offering.capacity, price, &mut owned);
        }
    }
    let chosen = placed.and_then(|(provider, on, capacity, price)| {
        share(task.resources, capacity, price).map(|cost| ProviderCost {
            provider: provider.to_string(),
            cost,
            on: on.to_string(),
        })
    });
    let by_provider: Vec<ProviderCost> = owned.into_values().collect();
    let next_best = by_provider
        .iter()
        .filter(|p| chosen.as_ref().is_none_or(|c| c.provider != p.provider))
        .min_by(|a, b| a.cost.cmp(&b.cost).then(a.provider.cmp(&b.provider)))
        .cloned();
    Explanation { task: task.id, chosen, next_best, by_provider }
}

/// The task's share of `price` by its dominant resource on a machine of `capacity`.
fn share(ask: Resources, capacity: Resources, price: MicrosPerHour) -> Option<MicrosPerHour> {
    if !capacity.fits(&ask) || capacity.milli_cpu == 0 || capacity.memory_bytes == 0 {
        return None;
    }
    let cpu = ask.milli_cpu as u128 * price as u128 / capacity.milli_cpu as u128;
    let memory = ask.memory_bytes as u128 * price as u128 / capacity.memory_bytes as u128;
    Some(cpu.max(memory) as u64)
}
