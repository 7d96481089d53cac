//! The placement index: machines grouped into pools of identical attributes, each pool keeping
//! its machines ordered by free capacity, so finding a machine for a task costs a logarithmic
//! lookup and a short scan instead of a pass over every machine.
//!
//! It answers "which machine, and at what score" and keeps the books when a task is assigned
//! or released. It holds the one feasibility rule (resources never overcommitted, constraints,
//! spot, spread limit) that placement, preemption and consolidation all use. It deliberately
//! does not decide the order of tasks or whether to buy machines.

use super::hashing::Fx;
pub(crate) use super::hashing::mix;
use super::model::{Dimension, Filter, MachineState, MachineView, NoFit, Spread, TaskAsk};
use crate::resources::Resources;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Feasible candidates compared per pool before choosing: a few are enough to honour spread
/// and tightness; more only costs time.
const CANDIDATES_SPREAD: u32 = 6;
const CANDIDATES_PACK: u32 = 2;

/// A busy machine's capacity is already paid for, so work goes to one that fits before an idle
/// machine is opened, unless the task's share cost on the idle machine (its shape suits the
/// task) is below this fraction (per mille) of its share cost on the busy one. Without this a
/// memory-rich machine that has work takes cpu-heavy tasks until it is cpu-full with its memory
/// idle, while a cpu-rich machine that would hold them stays closed.
pub(crate) const OPEN_WHEN_SHARE_BELOW_PERMILLE: u64 = 900;

/// Lower is better. Spread preferences come first (only when the task asks for them), then
/// what the placement adds to the bill, then how tightly it packs, then a seeded tie-break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Score {
    pub same_group: u32,
    pub same_zone: u32,
    pub same_provider: u32,
    /// A machine that runs nothing could be given back, so putting work there adds to the
    /// bill: any busy (or owned) machine that fits comes first.
    pub opens: bool,
    /// Then the task's share of the machine's price by its dominant resource: it picks the
    /// machine whose shape suits the task (a memory-heavy task goes where memory is cheap),
    /// which keeps cpu-rich machines for cpu-heavy work and strands less capacity.
    pub marginal: u64,
    pub leftover_permille: u64,
    pub tie_break: u64,
}

pub(crate) struct Slot<'a> {
    pub view: &'a MachineView,
    pub free: Resources,
    pub free_gpus: u32,
    pub pool: u32,
    /// Runs something (or is owned): in the best-fit indexes; otherwise in the idle index.
    in_use: bool,
    /// In an index at all: ready or provisioning, and not closed by consolidation.
    open: bool,
    tie_break: u64,
}

struct Pool<'a> {
    rep: &'a MachineView,
    zone: u32,
    provider: u32,
    members: Vec<u32>,
    by_cpu: BTreeSet<(u64, u64, u32)>,
    idle: BTreeSet<(u64, u64, u32)>,
}

/// Which pools a kind of task may use, and how many machines each rule excluded.
struct Eligible {
    pools: Vec<u32>,
    filtered: BTreeMap<Filter, u32>,
}

type FailureKey<'a> = (Resources, u32, usize, Option<u32>);

pub(crate) struct Cluster<'a> {
    pub slots: Vec<Slot<'a>>,
    pools: Vec<Pool<'a>>,
    names: HashMap<String, u32, Fx>,
    group_machine: HashMap<(u32, u32), u32, Fx>,
    group_zone: HashMap<(u32, u32), u32, Fx>,
    group_provider: HashMap<(u32, u32), u32, Fx>,
    eligible_index: HashMap<(&'a super::model::Constraints, bool), usize, Fx>,
    eligible: Vec<Eligible>,
    failures: HashMap<FailureKey<'a>, NoFit, Fx>,
}

impl<'a> Cluster<'a> {
    pub fn new(machines: &'a [MachineView], seed: u64) -> Cluster<'a> {
        let mut cluster = Cluster {
            slots: Vec::with_capacity(machines.len()),
            pools: Vec::new(),
            names: HashMap::default(),
            group_machine: HashMap::default(),
            group_zone: HashMap::default(),
            group_provider: HashMap::default(),
            eligible_index: HashMap::default(),
            eligible: Vec::new(),
            failures: HashMap::default(),
        };
        let mut pool_of: HashMap<PoolKey<'a>, u32> = HashMap::new();
        for (index, view) in machines.iter().enumerate() {
            let index = index as u32;
            let key = PoolKey::of(view);
            let pool = match pool_of.get(&key) {
                Some(&pool) => pool,
                None => {
                    let zone = cluster.intern(&format!("{}/{}/{}", view.provider, view.region, view.zone));
                    let provider = cluster.intern(&view.provider);
                    let pool = cluster.pools.len() as u32;
                    cluster.pools.push(Pool {
                        rep: view,
                        zone,
                        provider,
                        members: Vec::new(),
                        by_cpu: BTreeSet::new(),
                        idle: BTreeSet::new(),
                    });
                    pool_of.insert(key, pool);
                    pool
                }
            };
            let (zone, provider) = (cluster.pools[pool as usize].zone, cluster.pools[pool as usize].provider);
            for (group, &count) in &view.group_counts {
                let group = cluster.intern(group);
                *cluster.group_machine.entry((group, index)).or_default() += count;
                *cluster.group_zone.entry((group, zone)).or_default() += count;
                *cluster.group_provider.entry((group, provider)).or_default() += count;
            }
            let open = view.state != MachineState::Draining;
            cluster.slots.push(Slot {
                view,
                free: view.free(),
                free_gpus: view.free_gpus(),
                pool,
                in_use: view.sunk || view.price == 0 || view.allocated != Resources::ZERO || view.gpus_allocated > 0,
                open: false,
                tie_break: mix(seed ^ mix(view.id.as_u128() as u64 ^ (view.id.as_u128() >> 64) as u64)),
            });
            cluster.pools[pool as usize].members.push(index);
            if open {
                cluster.open(index);
            }
        }
        cluster
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.insert(name.to_string(), id);
        id
    }

    fn group_id(&self, group: &str) -> Option<u32> {
        self.names.get(group).copied()
    }

    /// Puts a machine (back) into the indexes so it can receive work.
    pub fn open(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if slot.open || slot.view.state == MachineState::Draining {
            return;
        }
        slot.open = true;
        let (free, in_use, price) = (slot.free, slot.in_use, slot.view.price);
        let pool = &mut self.pools[slot.pool as usize];
        if in_use {
            pool.by_cpu.insert((free.milli_cpu, free.memory_bytes, index));
        } else {
            pool.idle.insert((price, free.memory_bytes, index));
        }
    }

    /// Takes a machine out of the indexes (it is being drained): no work goes there.
    pub fn close(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if !slot.open {
            return;
        }
        slot.open = false;
        let (free, price) = (slot.free, slot.view.price);
        let pool = &mut self.pools[slot.pool as usize];
        pool.by_cpu.remove(&(free.milli_cpu, free.memory_bytes, index));
        pool.idle.remove(&(price, free.memory_bytes, index));
        self.failures.clear();
    }

    /// Counts `task` on machine `index`. The caller has checked feasibility with `find` or
    /// `fits`; resources saturate rather than wrap if it has not.
    pub fn assign(&mut self, index: u32, task: &TaskAsk) {
        let was_open = self.slots[index as usize].open;
        self.close_quietly(index);
        let slot = &mut self.slots[index as usize];
        slot.free = slot.free.saturating_sub(&task.resources);
        slot.free_gpus = slot.free_gpus.saturating_sub(task.gpus);
        slot.in_use = true;
        self.count_group(index, &task.group, 1);
        if was_open {
            self.open(index);
        }
    }

    /// Gives `task`'s resources on machine `index` back (preemption, consolidation moves).
    pub fn release(&mut self, index: u32, task: &TaskAsk) {
        let was_open = self.slots[index as usize].open;
        self.close_quietly(index);
        let slot = &mut self.slots[index as usize];
        slot.free = (slot.free + task.resources).min_each(&slot.view.capacity);
        slot.free_gpus = (slot.free_gpus + task.gpus).min(slot.view.gpus);
        self.count_group(index, &task.group, -1);
        self.failures.clear();
        if was_open {
            self.open(index);
        }
    }

    fn close_quietly(&mut self, index: u32) {
        let failures = std::mem::take(&mut self.failures);
        self.close(index);
        self.failures = failures;
    }

    fn count_group(&mut self, index: u32, group: &str, delta: i32) {
        let group = match self.group_id(group) {
            Some(id) => id,
            None if delta > 0 => self.intern(group),
            None => return,
        };
        let pool = &self.pools[self.slots[index as usize].pool as usize];
        let (zone, provider) = (pool.zone, pool.provider);
        for (map, key) in [
            (&mut self.group_machine, (group, index)),
            (&mut self.group_zone, (group, zone)),
            (&mut self.group_provider, (group, provider)),
        ] {
            let count = map.entry(key).or_default();
            *count = count.saturating_add_signed(delta);
        }
    }

    pub fn same_group_on(&self, index: u32, group: &str) -> u32 {
        self.group_id(group).and_then(|g| self.group_machine.get(&(g, index)).copied()).unwrap_or(0)
    }

    /// Whether `task` may go on machine `index` right now (open, allowed, and it fits).
    pub fn fits(&mut self, index: u32, task: &'a TaskAsk, spot_ok: bool) -> bool {
        let slot = &self.slots[index as usize];
        if !slot.open {
            return false;
        }
        let pool = slot.pool;
        let eligible = self.eligible_for(task, spot_ok);
        self.eligible[eligible].pools.binary_search(&pool).is_ok() && self.fits_resources(index, task)
    }

    fn fits_resources(&self, index: u32, task: &TaskAsk) -> bool {
        let slot = &self.slots[index as usize];
        slot.free.fits(&task.resources)
            && slot.free_gpus >= task.gpus
            && (task.spread.max_per_machine == 0
                || self.same_group_on(index, &task.group) < task.spread.max_per_machine)
    }

    /// The pools `task` may use: computed once per distinct set of constraints.
    fn eligible_for(&mut self, task: &'a TaskAsk, spot_ok: bool) -> usize {
        if let Some(&at) = self.eligible_index.get(&(&task.constraints, spot_ok)) {
            return at;
        }
        let mut eligible = Eligible { pools: Vec::new(), filtered: BTreeMap::new() };
        for (index, pool) in self.pools.iter().enumerate() {
            match rejects(pool.rep, task, spot_ok) {
                None => eligible.pools.push(index as u32),
                Some(filter) => *eligible.filtered.entry(filter).or_default() += pool.members.len() as u32,
            }
        }
        let at = self.eligible.len();
        self.eligible.push(eligible);
        self.eligible_index.insert((&task.constraints, spot_ok), at);
        at
    }

    /// The best machine for `task`, or why there is none. Does not assign. A busy machine is
    /// preferred to an idle one unless the idle one's shape suits the task much better (see
    /// [`OPEN_WHEN_SHARE_BELOW_PERMILLE`]).
    pub fn find(&mut self, task: &'a TaskAsk, spot_ok: bool) -> Result<(u32, Score), NoFit> {
        self.find_with(task, spot_ok, true)
    }

    /// Like [`Cluster::find`], but an idle machine is chosen only when no busy one fits (so a
    /// consolidation move onto a busy machine is never passed over for an idle one).
    pub fn find_busy_first(&mut self, task: &'a TaskAsk, spot_ok: bool) -> Result<(u32, Score), NoFit> {
        self.find_with(task, spot_ok, false)
    }

    fn find_with(&mut self, task: &'a TaskAsk, spot_ok: bool, open_by_shape: bool) -> Result<(u32, Score), NoFit> {
        let eligible = self.eligible_for(task, spot_ok);
        let group = self.group_id(&task.group);
        let failure_key: FailureKey<'a> =
            (task.resources, task.gpus, eligible, group.filter(|_| task.spread.max_per_machine > 0));
        if let Some(reason) = self.failures.get(&failure_key) {
            return Err(reason.clone());
        }
        let spread = task.spread;
        let wants_spread = spread.machines || spread.zones || spread.providers;
        let limit = if wants_spread { CANDIDATES_SPREAD } else { CANDIDATES_PACK };
        let ask = task.resources;
        let mut busy: Option<(Score, u32)> = None;
        for &pool_index in &self.eligible[eligible].pools {
            let pool = &self.pools[pool_index as usize];
            if pool.rep.gpus < task.gpus {
                continue;
            }
            // Skip-scan of the (free cpu, free memory) order: at each level of free cpu that
            // suffices, jump straight to the first machine with enough memory, so only machines
            // that fit both are visited (levels are few: cpu comes in coarse steps).
            let mut found = 0;
            let mut cursor = (ask.milli_cpu, ask.memory_bytes, 0u32);
            while found < limit {
                let Some(&(free_cpu, free_memory, index)) = pool.by_cpu.range(cursor..).next() else {
                    break;
                };
                if free_memory < ask.memory_bytes {
                    cursor = (free_cpu, ask.memory_bytes, 0);
                    continue;
                }
                cursor = (free_cpu, free_memory, index + 1);
                if self.fits_resources(index, task) {
                    found += 1;
                    let view = self.slots[index as usize].view;
                    let marginal = share_cost(task.resources, view.capacity, view.price);
                    let score = self.score(index, task, group, false, marginal);
                    if busy.is_none_or(|(b, _)| score < b) {
                        busy = Some((score, index));
                    }
                }
            }
        }
        // The idle machine that fits at the lowest share cost, anywhere (the idle machines of
        // one pool are interchangeable, so one per pool is enough).
        let mut idle: Option<(Score, u32)> = None;
        if open_by_shape || busy.is_none_or(|(b, _)| wants_spread && b.same_group > 0) {
            for &pool_index in &self.eligible[eligible].pools {
                for &(_, _, index) in &self.pools[pool_index as usize].idle {
                    if self.fits_resources(index, task) {
                        let view = self.slots[index as usize].view;
                        let marginal = share_cost(task.resources, view.capacity, view.price);
                        let score = self.score(index, task, group, true, marginal);
                        if idle.is_none_or(|(b, _)| score < b) {
                            idle = Some((score, index));
                        }
                        break;
                    }
                }
            }
        }
        let best = match (busy, idle) {
            (Some(b), Some(i)) => {
                let shape_wins = open_by_shape
                    && u128::from(i.0.marginal) * 1000
                        < u128::from(b.0.marginal) * u128::from(OPEN_WHEN_SHARE_BELOW_PERMILLE);
                let spread_wins = wants_spread && b.0.same_group > 0 && i.0 < b.0;
                Some(if shape_wins || spread_wins { i } else { b })
            }
            (b, i) => b.or(i),
        };
        match best {
            Some((score, index)) => Ok((index, score)),
            None => {
                let reason = self.no_fit(task, eligible);
                self.failures.insert(failure_key, reason.clone());
                Err(reason)
            }
        }
    }

    fn score(&self, index: u32, task: &TaskAsk, group: Option<u32>, opens: bool, marginal: u64) -> Score {
        let slot = &self.slots[index as usize];
        let pool = &self.pools[slot.pool as usize];
        let count =
            |map: &HashMap<(u32, u32), u32, Fx>, key: u32| group.and_then(|g| map.get(&(g, key)).copied()).unwrap_or(0);
        let Spread { machines, zones, providers, .. } = task.spread;
        let leftover = |free: u64, ask: u64, capacity: u64| (free - ask) * 1000 / capacity.max(1);
        let capacity = slot.view.capacity;
        Score {
            same_group: if machines { count(&self.group_machine, index) } else { 0 },
            same_zone: if zones { count(&self.group_zone, pool.zone) } else { 0 },
            same_provider: if providers { count(&self.group_provider, pool.provider) } else { 0 },
            opens,
            marginal,
            leftover_permille: leftover(slot.free.milli_cpu, task.resources.milli_cpu, capacity.milli_cpu)
                + leftover(slot.free.memory_bytes, task.resources.memory_bytes, capacity.memory_bytes),
            tie_break: slot.tie_break,
        }
    }

    /// Counts, over every machine, why `task` cannot go there. Only runs on failure.
    fn no_fit(&self, task: &TaskAsk, eligible: usize) -> NoFit {
        let eligible = &self.eligible[eligible];
        let mut reason = NoFit {
            machines_evaluated: self.slots.len() as u32,
            filtered: eligible.filtered.clone(),
            ..NoFit::default()
        };
        for &pool in &eligible.pools {
            for &index in &self.pools[pool as usize].members {
                let slot = &self.slots[index as usize];
                let short = if !slot.open {
                    *reason.filtered.entry(Filter::State).or_default() += 1;
                    continue;
                } else if task.resources.milli_cpu > slot.free.milli_cpu {
                    Dimension::Cpu
                } else if task.resources.memory_bytes > slot.free.memory_bytes {
                    Dimension::Memory
                } else if task.gpus > slot.free_gpus {
                    Dimension::Gpu
                } else {
                    *reason.filtered.entry(Filter::Spread).or_default() += 1;
                    continue;
                };
                *reason.exhausted.entry(short).or_default() += 1;
            }
        }
        reason
    }
}

/// `ask`'s share of `price` on a machine of `capacity`, by its dominant resource.
pub(crate) fn share_cost(ask: Resources, capacity: Resources, price: u64) -> u64 {
    let share = |a: u64, c: u64| (a as u128 * price as u128).checked_div(c as u128).unwrap_or(0);
    share(ask.milli_cpu, capacity.milli_cpu).max(share(ask.memory_bytes, capacity.memory_bytes)) as u64
}

/// The first rule that keeps `task` off machines like `machine`, if any.
pub(crate) fn rejects(machine: &MachineView, task: &TaskAsk, spot_ok: bool) -> Option<Filter> {
    let c = &task.constraints;
    let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
    if !any(&c.providers, &machine.provider) {
        Some(Filter::Provider)
    } else if !any(&c.regions, &machine.region) {
        Some(Filter::Region)
    } else if !any(&c.zones, &machine.zone) {
        Some(Filter::Zone)
    } else if c.labels.iter().any(|(k, v)| machine.labels.get(k) != Some(v)) {
        Some(Filter::Label)
    } else if c.arch.as_deref().is_some_and(|arch| arch != machine.arch()) {
        Some(Filter::Arch)
    } else if machine.spot && !spot_ok {
        Some(Filter::Spot)
    } else {
        None
    }
}

/// Machines alike in everything a constraint can look at, of one size and price, share a pool
/// (so the idle machines of a pool are interchangeable).
#[derive(PartialEq, Eq, Hash)]
struct PoolKey<'a> {
    provider: &'a str,
    region: &'a str,
    zone: &'a str,
    arch: &'a str,
    labels: &'a BTreeMap<String, String>,
    gpus: u32,
    spot: bool,
    capacity: Resources,
    price: u64,
}

impl<'a> PoolKey<'a> {
    fn of(view: &'a MachineView) -> PoolKey<'a> {
        PoolKey {
            provider: &view.provider,
            region: &view.region,
            zone: &view.zone,
            arch: view.arch(),
            labels: &view.labels,
            gpus: view.gpus,
            spot: view.spot,
            capacity: view.capacity,
            price: view.price,
        }
    }
}

trait MinEach {
    fn min_each(&self, other: &Resources) -> Resources;
}

impl MinEach for Resources {
    fn min_each(&self, other: &Resources) -> Resources {
        Resources::new(self.milli_cpu.min(other.milli_cpu), self.memory_bytes.min(other.memory_bytes))
    }
}
