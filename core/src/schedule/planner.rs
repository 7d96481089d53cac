//! The provisioning planner: for work that fits on no existing machine, which machines to buy
//! (offering, spot or not, zone) and which tasks each is for, at the lowest hourly cost.
//!
//! Tasks are grouped into classes that may share a machine (same constraints, same right to
//! spot, same spread limit) and, within a class, into shapes (same size). For each class the
//! candidate offerings are those the policy, the constraints and the quotas allow, reduced to
//! the ones no cheaper offering of the same provider dominates. Each shape is valued at what
//! one task of it would cost alone on the cheapest candidate that holds it (the fractional
//! cover bound's resource prices stand in when only owned capacity holds it); machines are then
//! chosen greedily by price per value packed, most valuable shapes first, so a large machine
//! is bought only where it costs less than its tasks would alone, and identical machines are
//! committed in batches. Owned capacity costs nothing at the margin, so
//! it fills first; spot prices are offered only to interruptible work the policy allows there.
//! It deliberately does not place onto existing machines (that is `place`) nor evict.

use super::catalog::Offering;
use super::cluster::mix;
use super::cover::cover_bound;
use super::model::{Dimension, Filter, MicrosPerHour, NoFit, Provision, Snapshot, TaskAsk};
use crate::resources::Resources;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// How many of each shape (by index) one machine takes.
type Fill = Vec<(usize, u32)>;

/// An offering bought on demand or spot, as the planner prices it.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    offering: u32,
    spot: bool,
    capacity: Resources,
    gpus: u32,
    /// What it adds to the bill: zero for owned capacity.
    marginal: MicrosPerHour,
    provider: u32,
}

/// Tasks of one size (and, when spread-limited, one group) within a class.
struct Shape<'a> {
    resources: Resources,
    gpus: u32,
    /// How many may share one machine (spread); `u32::MAX` when unlimited.
    per_machine: u32,
    tasks: Vec<&'a TaskAsk>,
    next: usize,
    value: f64,
}

impl Shape<'_> {
    fn remaining(&self) -> u32 {
        (self.tasks.len() - self.next) as u32
    }
}

struct Class<'a> {
    exemplar: &'a TaskAsk,
    spot_ok: bool,
    shapes: Vec<Shape<'a>>,
}

/// Per provider: what the quota still allows.
#[derive(Clone, Copy, Debug)]
struct Room {
    machines: u64,
    milli_cpu: u64,
}

pub(crate) fn provision<'a>(
    snapshot: &Snapshot,
    unplaced: Vec<(&'a TaskAsk, NoFit)>,
    seed: u64,
    provisions: &mut Vec<Provision>,
) -> Vec<(&'a TaskAsk, NoFit)> {
    let catalog = &snapshot.catalog;
    let policy = &snapshot.policy;
    if catalog.is_empty() || unplaced.is_empty() {
        return unplaced;
    }
    let mut reasons: HashMap<Uuid, NoFit> = HashMap::new();
    let classes = classify(&unplaced, snapshot, &mut reasons);

    // Providers by number, and the room each one's quota leaves after existing machines.
    let mut providers: Vec<&str> = catalog.offerings.iter().map(|o| o.provider.as_str()).collect();
    providers.sort_unstable();
    providers.dedup();
    let mut room: Vec<Room> = providers
        .iter()
        .map(|&provider| {
            let quota = policy.quotas.get(provider).copied().unwrap_or_default();
            let existing = snapshot.machines.iter().filter(|m| m.provider == provider);
            let (count, cpu) = existing.fold((0u64, 0u64), |(n, c), m| (n + 1, c + m.capacity.milli_cpu));
            Room {
                machines: quota.max_machines.map_or(u64::MAX, |max| u64::from(max).saturating_sub(count)),
                milli_cpu: quota.max_milli_cpu.map_or(u64::MAX, |max| max.saturating_sub(cpu)),
            }
        })
        .collect();
    let allowed = allowed_offerings(snapshot);
    let policy_filtered = (catalog.offerings.len() - allowed.len()) as u32;

    let mut still_unplaced = Vec::new();
    for mut class in classes {
        let mut filtered: BTreeMap<Filter, u32> = BTreeMap::new();
        if policy_filtered > 0 {
            filtered.insert(Filter::Policy, policy_filtered);
        }
        let eligible =
            candidates(&catalog.offerings, &allowed, &providers, class.exemplar, class.spot_ok, &mut filtered);
        let efficient = pareto(&eligible);
        assign_values(&mut class, &efficient);
        fill_class(&mut class, &efficient, &catalog.offerings, &mut room, seed, provisions);

        for shape in &class.shapes {
            for &task in &shape.tasks[shape.next..] {
                let mut reason = reasons.remove(&task.id).unwrap_or_default();
                reason.offerings_evaluated = catalog.offerings.len() as u32;
                reason.offerings_filtered = filtered.clone();
                for candidate in &eligible {
                    match short_of(candidate, shape) {
                        Some(dimension) => *reason.offerings_too_small.entry(dimension).or_default() += 1,
                        None => *reason.offerings_filtered.entry(Filter::Quota).or_default() += 1,
                    }
                }
                still_unplaced.push((task, reason));
            }
        }
    }
    still_unplaced
}

/// Groups tasks that may share a machine; keeps their placement reasons for later.
fn classify<'a>(
    unplaced: &[(&'a TaskAsk, NoFit)],
    snapshot: &Snapshot,
    reasons: &mut HashMap<Uuid, NoFit>,
) -> Vec<Class<'a>> {
    let mut classes: Vec<Class<'a>> = Vec::new();
    let mut class_of: HashMap<(&'a super::model::Constraints, bool, u32), usize> = HashMap::new();
    let mut shape_of: HashMap<(usize, Resources, u32, &'a str), usize> = HashMap::new();
    for (task, reason) in unplaced {
        let task: &'a TaskAsk = task;
        reasons.insert(task.id, reason.clone());
        let spot_ok = snapshot.policy.allows_spot(task);
        let per_machine = match (task.spread.machines, task.spread.max_per_machine) {
            (_, limit) if limit > 0 => limit,
            // A new machine holding several replicas of one app would defeat the spread the
            // app asked for: one replica per new machine.
            (true, _) if task.kind == super::model::WorkloadKind::Service => 1,
            _ => u32::MAX,
        };
        let class = *class_of.entry((&task.constraints, spot_ok, per_machine)).or_insert_with(|| {
            classes.push(Class { exemplar: task, spot_ok, shapes: Vec::new() });
            classes.len() - 1
        });
        let group: &'a str = if per_machine == u32::MAX { "" } else { &task.group };
        let shape = *shape_of.entry((class, task.resources, task.gpus, group)).or_insert_with(|| {
            classes[class].shapes.push(Shape {
                resources: task.resources,
                gpus: task.gpus,
                per_machine,
                tasks: Vec::new(),
                next: 0,
                value: 0.0,
            });
            classes[class].shapes.len() - 1
        });
        classes[class].shapes[shape].tasks.push(task);
    }
    classes
}

/// Every offering (and spot variant) `exemplar`'s class may buy; counts what each rule removed.
fn candidates(
    offerings: &[Offering],
    allowed: &[u32],
    providers: &[&str],
    exemplar: &TaskAsk,
    spot_ok: bool,
    filtered: &mut BTreeMap<Filter, u32>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for &index in allowed {
        let o = &offerings[index as usize];
        if let Some(filter) = offering_rejects(o, exemplar) {
            *filtered.entry(filter).or_default() += 1;
            continue;
        }
        let provider = providers.binary_search(&o.provider.as_str()).unwrap_or(0) as u32;
        let base =
            Candidate { offering: index, spot: false, capacity: o.capacity, gpus: o.gpus, marginal: 0, provider };
        if let Some(price) = o.marginal_price(false) {
            out.push(Candidate { marginal: price, ..base });
        }
        if !o.sunk
            && spot_ok
            && let Some(price) = o.price_spot
        {
            out.push(Candidate { spot: true, marginal: price, ..base });
        }
    }
    out
}

/// The first constraint of `task` that `offering` does not meet, if any (policy and spot aside).
fn offering_rejects(o: &Offering, task: &TaskAsk) -> Option<Filter> {
    let c = &task.constraints;
    let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
    if !any(&c.providers, &o.provider) {
        Some(Filter::Provider)
    } else if !any(&c.regions, &o.region) {
        Some(Filter::Region)
    } else if !c.zones.is_empty() && !o.zones.iter().any(|z| c.zones.contains(z)) {
        Some(Filter::Zone)
    } else if c.labels.iter().any(|(k, v)| o.labels.get(k) != Some(v)) {
        Some(Filter::Label)
    } else if c.arch.as_deref().is_some_and(|arch| arch != o.arch()) {
        Some(Filter::Arch)
    } else {
        None
    }
}

/// What `task` would cost alone on the cheapest machine the snapshot's catalog could sell it
/// (on demand, or spot when `spot_ok`), or `None` when nothing can be bought for it. Owned
/// capacity counts at its marginal price of zero.
pub(crate) fn standalone_price(snapshot: &Snapshot, allowed: &[u32], task: &TaskAsk, spot_ok: bool) -> Option<u64> {
    let offerings = &snapshot.catalog.offerings;
    allowed
        .iter()
        .map(|&i| &offerings[i as usize])
        .filter(|o| o.capacity.fits(&task.resources) && o.gpus >= task.gpus && offering_rejects(o, task).is_none())
        .filter_map(|o| {
            let on_demand = o.marginal_price(false);
            let spot = if spot_ok && !o.sunk { o.price_spot } else { None };
            match (on_demand, spot) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        })
        .min()
}

/// The offerings the policy lets the snapshot buy, by index.
pub(crate) fn allowed_offerings(snapshot: &Snapshot) -> Vec<u32> {
    let policy = &snapshot.policy;
    (0..snapshot.catalog.offerings.len() as u32)
        .filter(|&i| {
            let o = &snapshot.catalog.offerings[i as usize];
            policy.allows_provider(&o.provider) && policy.allows_region(&o.region)
        })
        .collect()
}

/// Drops candidates that a no-dearer candidate of the same provider matches or beats in every
/// resource: they can never be the better buy (the same provider, because quotas are per
/// provider and a dominated offering may be needed once the better one's quota runs out).
fn pareto(candidates: &[Candidate]) -> Vec<Candidate> {
    let mut sorted: Vec<Candidate> = candidates.to_vec();
    sorted.sort_by(|a, b| {
        a.marginal
            .cmp(&b.marginal)
            .then(b.capacity.milli_cpu.cmp(&a.capacity.milli_cpu))
            .then(b.capacity.memory_bytes.cmp(&a.capacity.memory_bytes))
            .then(b.gpus.cmp(&a.gpus))
            .then(a.offering.cmp(&b.offering))
            .then(a.spot.cmp(&b.spot))
    });
    let mut kept: Vec<Candidate> = Vec::new();
    for candidate in sorted {
        let dominated = kept.iter().any(|k| {
            k.provider == candidate.provider && k.capacity.fits(&candidate.capacity) && k.gpus >= candidate.gpus
        });
        if !dominated {
            kept.push(candidate);
        }
    }
    kept
}

/// Gives each shape its worth (its price alone, else its cost at the fractional bound's
/// resource prices), then sorts shapes most valuable first. A tiny size term keeps shapes
/// comparable when the prices are zero (only owned capacity) or one resource is free.
fn assign_values(class: &mut Class<'_>, candidates: &[Candidate]) {
    let demand: Resources = class
        .shapes
        .iter()
        .map(|s| {
            Resources::new(
                s.resources.milli_cpu * s.remaining() as u64,
                s.resources.memory_bytes * s.remaining() as u64,
            )
        })
        .sum();
    let paid: Vec<(Resources, u64)> =
        candidates.iter().filter(|c| c.marginal > 0 && c.gpus == 0).map(|c| (c.capacity, c.marginal)).collect();
    let bound = cover_bound(&paid, demand);
    let (per_cpu, per_byte) = bound.map_or((0.0, 0.0), |b| (b.per_milli_cpu, b.per_byte));
    let per_gpu = candidates
        .iter()
        .filter(|c| c.gpus > 0 && c.marginal > 0)
        .map(|c| c.marginal as f64 / f64::from(c.gpus))
        .fold(f64::INFINITY, f64::min);
    let per_gpu = if per_gpu.is_finite() { per_gpu } else { 1e6 };
    for shape in &mut class.shapes {
        let size =
            shape.resources.milli_cpu as f64 / 1000.0 + shape.resources.memory_bytes as f64 / (4u64 << 30) as f64;
        // What the task would cost alone on the cheapest paid machine that holds it: packing
        // is only worth it where a machine costs less than its tasks would alone.
        let alone = candidates
            .iter()
            .filter(|c| c.marginal > 0 && c.capacity.fits(&shape.resources) && c.gpus >= shape.gpus)
            .map(|c| c.marginal)
            .min();
        shape.value = match alone {
            Some(price) => price as f64 + 1e-3 * size,
            _ => {
                per_cpu * shape.resources.milli_cpu as f64
                    + per_byte * shape.resources.memory_bytes as f64
                    + per_gpu * f64::from(shape.gpus)
                    + 1e-3 * size
            }
        };
    }
    class.shapes.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.tasks[0].id.cmp(&b.tasks[0].id)));
}

/// How many of each shape one machine of `capacity` holds, greedily largest first.
fn fill(capacity: Resources, gpus: u32, shapes: &[Shape<'_>]) -> (Fill, f64) {
    let mut free = capacity;
    let mut free_gpus = gpus;
    let mut taken = Vec::new();
    let mut value = 0.0;
    for (index, shape) in shapes.iter().enumerate() {
        let remaining = shape.remaining();
        if remaining == 0 {
            continue;
        }
        let by = |free: u64, need: u64| free.checked_div(need).unwrap_or(u64::MAX);
        let gpu_room = free_gpus.checked_div(shape.gpus).map_or(u64::MAX, u64::from);
        let n = by(free.milli_cpu, shape.resources.milli_cpu)
            .min(by(free.memory_bytes, shape.resources.memory_bytes))
            .min(gpu_room)
            .min(u64::from(remaining.min(shape.per_machine))) as u32;
        if n == 0 {
            continue;
        }
        free = free.saturating_sub(&Resources::new(
            shape.resources.milli_cpu * u64::from(n),
            shape.resources.memory_bytes * u64::from(n),
        ));
        free_gpus -= shape.gpus * n;
        value += shape.value * f64::from(n);
        taken.push((index, n));
    }
    (taken, value)
}

fn fill_class(
    class: &mut Class<'_>,
    candidates: &[Candidate],
    offerings: &[Offering],
    room: &mut [Room],
    seed: u64,
    provisions: &mut Vec<Provision>,
) {
    loop {
        // (price per value, value, candidate index, fill)
        let mut best: Option<(f64, f64, usize, Fill)> = None;
        for (index, candidate) in candidates.iter().enumerate() {
            let left = room[candidate.provider as usize];
            if left.machines == 0 || left.milli_cpu < candidate.capacity.milli_cpu {
                continue;
            }
            let (taken, value) = fill(candidate.capacity, candidate.gpus, &class.shapes);
            if taken.is_empty() {
                continue;
            }
            let ratio = candidate.marginal as f64 / value;
            // Equal price per value: free capacity packs as much as it can; paid capacity
            // stays small ("fewer, larger machines only when cheaper").
            let better = best.as_ref().is_none_or(|(r, v, _, _)| {
                ratio < *r * (1.0 - 1e-9)
                    || (ratio <= *r * (1.0 + 1e-9) && if candidate.marginal == 0 { value > *v } else { value < *v })
            });
            if better {
                best = Some((ratio, value, index, taken));
            }
        }
        let Some((_, _, index, taken)) = best else {
            return;
        };
        let candidate = candidates[index];
        // The same machine fill repeats while every shape it takes has enough left.
        let mut repeat = taken.iter().map(|&(s, n)| class.shapes[s].remaining() / n).min().unwrap_or(1).max(1) as u64;
        let left = &mut room[candidate.provider as usize];
        repeat = repeat.min(left.machines).min(left.milli_cpu / candidate.capacity.milli_cpu.max(1)).max(1);
        left.machines = left.machines.saturating_sub(repeat);
        left.milli_cpu = left.milli_cpu.saturating_sub(repeat * candidate.capacity.milli_cpu);
        let offering = &offerings[candidate.offering as usize];
        for _ in 0..repeat {
            let counter = provisions.len() as u64;
            let mut tasks = Vec::new();
            for &(s, n) in &taken {
                let shape = &mut class.shapes[s];
                tasks.extend(shape.tasks[shape.next..shape.next + n as usize].iter().map(|t| t.id));
                shape.next += n as usize;
            }
            provisions.push(Provision {
                id: Uuid::from_u64_pair(mix(seed ^ counter), mix(seed.rotate_left(32) ^ !counter)),
                provider: offering.provider.clone(),
                region: offering.region.clone(),
                zone: choose_zone(offering, class.exemplar, seed, counter),
                instance_type: offering.instance_type.clone(),
                capacity: offering.capacity,
                spot: candidate.spot,
                price: if candidate.spot { candidate.marginal } else { offering.price_on_demand },
                sunk: offering.sunk,
                tasks,
            });
        }
    }
}

/// A zone the constraints accept, rotated across machines so that new capacity is spread.
fn choose_zone(offering: &Offering, task: &TaskAsk, seed: u64, counter: u64) -> String {
    let allowed: Vec<&String> = offering
        .zones
        .iter()
        .filter(|z| task.constraints.zones.is_empty() || task.constraints.zones.contains(z))
        .collect();
    if allowed.is_empty() {
        return String::new();
    }
    allowed[((mix(seed) ^ counter) % allowed.len() as u64) as usize].clone()
}

fn short_of(candidate: &Candidate, shape: &Shape<'_>) -> Option<Dimension> {
    if candidate.capacity.milli_cpu < shape.resources.milli_cpu {
        Some(Dimension::Cpu)
    } else if candidate.capacity.memory_bytes < shape.resources.memory_bytes {
        Some(Dimension::Memory)
    } else if candidate.gpus < shape.gpus {
        Some(Dimension::Gpu)
    } else {
        None
    }
}
