//! Cost metering: what a machine cost over an interval, and how that cost divides among the
//! tasks that ran on it, with the rest reported as idle.
//!
//! Money is integer micro-units (millionths of the currency, like the price catalog's
//! [`MicrosPerHour`]) and time is integer milliseconds since the Unix epoch, UTC (instants are
//! `i64`, durations `u64`). Nothing here reads a clock or does I/O: the caller brings the machine
//! intervals, the task intervals on them and the prices actually paid.
//!
//! The model follows OpenCost: a machine's price splits into a cpu part and a memory part by a
//! reference ratio ([`CostSplit`]), and each part is divided among the tasks by the fraction of
//! that resource each one held (its request, or the larger of request and measured usage). Time
//! is cut into slices at every task start and end, so a task pays only while it runs. Whatever no
//! task held is idle cost.
//!
//! Why cpu + memory and not a dominant-resource share: dominant shares do not add up (a task
//! holding all the cpu and another holding all the memory would each "own" the machine), so they
//! would need a renormalisation that makes one task's bill depend on its neighbours' shape. The
//! split is additive: per resource the shares sum to at most the whole, idle is simply what is
//! left of each part, and the numbers are comparable with OpenCost's.
//!
//! Exactness: [`allocate`] apportions the machine's cost once, by largest remainder, over the
//! tasks and idle, so `sum(per_task) + idle == machine_cost(..)` always, with no micro lost or
//! invented. The weights it apportions by are integers at a resolution of about 2^-64 of the
//! interval (floored), so every party is within one micro of its exact share.
//!
//! Deliberately absent: GPUs (a [`Resources`] has none, so a GPU machine's price is split over
//! cpu and memory only), storage and network, and any notion of discounts beyond "the price
//! per hour actually paid" that the caller puts on the interval.

use crate::resources::Resources;
use crate::schedule::{MicrosPerHour, OwnedRates};
use chrono::NaiveDate;
use std::collections::BTreeMap;

const MS_PER_HOUR: u128 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;
const GIB: u128 = 1 << 30;
/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// How the machine was paid for; carried for reports, it does not change the arithmetic (the
/// price on the interval is already the one that applies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PriceKind {
    #[default]
    OnDemand,
    /// The spot price actually paid over the interval.
    Spot,
    /// Owned capacity at its amortized rate.
    Owned,
}

/// The relative weight of a machine's cpu and memory in its price: the cpu part of the cost is
/// `cpu / (cpu + memory)` of it. Both zero means an even split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostSplit {
    pub cpu: u64,
    pub memory: u64,
}

impl CostSplit {
    /// OpenCost's default reference rates (also the shipped `onprem_reference.csv`): per vCPU-hour
    /// and per GiB-hour, in micros.
    pub const REFERENCE_PER_VCPU_HOUR: MicrosPerHour = 31_611;
    pub const REFERENCE_PER_GIB_HOUR: MicrosPerHour = 4_237;

    /// The split of a machine of `capacity` priced by reference `rates` (GPU rates ignored): the
    /// cpu part weighs `vcpus * per_vcpu_hour`, the memory part `GiB * per_gib_hour`.
    pub fn from_rates(capacity: Resources, rates: &OwnedRates) -> CostSplit {
        // Both sides scaled by 1000 * 2^30 so milli-cpus and bytes compare without division.
        let cpu = (capacity.milli_cpu as u128).saturating_mul(rates.per_vcpu_hour as u128).saturating_mul(GIB);
        let memory = (capacity.memory_bytes as u128).saturating_mul(rates.per_gib_hour as u128).saturating_mul(1000);
        let shift = (128 - cpu.max(memory).leading_zeros()).saturating_sub(64);
        CostSplit { cpu: (cpu >> shift) as u64, memory: (memory >> shift) as u64 }
    }

    /// [`CostSplit::from_rates`] with OpenCost's default reference rates.
    pub fn reference(capacity: Resources) -> CostSplit {
        let rates = OwnedRates {
            per_vcpu_hour: Self::REFERENCE_PER_VCPU_HOUR,
            per_gib_hour: Self::REFERENCE_PER_GIB_HOUR,
            per_gpu_hour: 0,
        };
        CostSplit::from_rates(capacity, &rates)
    }

    /// Splits `units` into (cpu, memory), flooring the cpu part; the two always sum to `units`.
    fn divide(&self, units: u128) -> (u128, u128) {
        let total = self.cpu as u128 + self.memory as u128;
        let cpu = (units * self.cpu as u128).checked_div(total).unwrap_or(units / 2);
        (cpu, units - cpu)
    }
}

/// One machine over `[start_ms, end_ms)` at one price. A machine whose price changed (a spot
/// price moving) is several intervals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInterval {
    pub machine_id: String,
    pub provider: String,
    pub region: String,
    /// The offering's instance type.
    pub offering: String,
    pub price_kind: PriceKind,
    pub price_per_hour: MicrosPerHour,
    pub capacity: Resources,
    pub split: CostSplit,
    /// Milliseconds since the Unix epoch, UTC; inclusive.
    pub start_ms: i64,
    /// Milliseconds since the Unix epoch, UTC; exclusive. Not after `start_ms` means empty.
    pub end_ms: i64,
}

impl MachineInterval {
    pub fn duration_ms(&self) -> u64 {
        duration_ms(self.start_ms, self.end_ms)
    }

    pub fn cost(&self) -> u64 {
        machine_cost(self.price_per_hour, self.duration_ms())
    }

    /// This interval cut at every UTC midnight, so day and month roll-ups are exact. Each piece
    /// is costed (rounded) on its own, so the pieces' costs may differ from the whole's by at most
    /// one micro per piece.
    pub fn split_by_utc_day(&self) -> Vec<MachineInterval> {
        let mut pieces = Vec::new();
        let mut start = self.start_ms;
        while start < self.end_ms {
            let midnight = (start.div_euclid(MS_PER_DAY) + 1).saturating_mul(MS_PER_DAY);
            let end = midnight.min(self.end_ms);
            pieces.push(MachineInterval { start_ms: start, end_ms: end, ..self.clone() });
            start = end;
        }
        pieces
    }
}

/// One task on a machine over `[start_ms, end_ms)` (same clock as [`MachineInterval`]); the part
/// outside the machine's interval is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInterval {
    pub task_id: String,
    pub team: String,
    pub app: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub request: Resources,
    /// Measured usage averaged over this interval, if known.
    pub usage: Option<Resources>,
}

/// What a task is charged for holding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AllocationMode {
    /// Its request, whatever it used.
    #[default]
    Request,
    /// Per resource, the larger of its request and its measured usage (the request when usage is
    /// unknown). Where the tasks together exceed the machine, their shares are scaled down to it.
    MaxRequestUsage,
}

/// What happens to the cost no task held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Reported as idle.
    #[default]
    Report,
    /// Spread over the tasks in proportion to their allocation; idle is then zero unless no task
    /// ran on the machine during the interval.
    ShareBack,
}

/// A machine interval's cost divided up: `per_task[i]` is `tasks[i]`'s share (input order, zero
/// for a task that did not overlap), and `sum(per_task) + idle` is exactly the machine's cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    pub per_task: Vec<(String, u64)>,
    pub idle: u64,
}

impl Allocation {
    pub fn allocated(&self) -> u64 {
        self.per_task.iter().map(|(_, micros)| micros).sum()
    }

    /// One line per task, then one idle line (`task: None`), for [`rollup`]. `tasks` must be the
    /// slice this allocation was computed from.
    pub fn lines<'a>(&self, machine: &'a MachineInterval, tasks: &'a [TaskInterval]) -> Vec<CostLine<'a>> {
        let mut lines: Vec<CostLine<'a>> = tasks
            .iter()
            .zip(&self.per_task)
            .map(|(task, (_, micros))| CostLine { machine, task: Some(task), micros: *micros })
            .collect();
        lines.push(CostLine { machine, task: None, micros: self.idle });
        lines
    }
}

/// A charge for reports: a task's share of a machine interval, or its idle cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostLine<'a> {
    pub machine: &'a MachineInterval,
    /// `None` for the idle line.
    pub task: Option<&'a TaskInterval>,
    pub micros: u64,
}

impl CostLine<'_> {
    pub fn team(&self) -> Option<&str> {
        self.task.map(|t| t.team.as_str())
    }

    pub fn app(&self) -> Option<&str> {
        self.task.map(|t| t.app.as_str())
    }

    /// The UTC day the machine interval starts on (split intervals by day first for day and month
    /// roll-ups: [`MachineInterval::split_by_utc_day`]).
    pub fn day(&self) -> Option<NaiveDate> {
        utc_day(self.machine.start_ms)
    }
}

/// Sums charges by any key, e.g. `rollup(&lines, |l| l.team().map(str::to_owned))` or
/// `rollup(&lines, |l| (l.machine.provider.clone(), l.machine.region.clone()))`. Sums saturate
/// at `u64::MAX` micros (eighteen trillion units of currency).
pub fn rollup<'l, 'a: 'l, K: Ord>(
    lines: impl IntoIterator<Item = &'l CostLine<'a>>,
    key: impl Fn(&CostLine<'a>) -> K,
) -> BTreeMap<K, u64> {
    let mut sums = BTreeMap::new();
    for line in lines {
        let sum: &mut u64 = sums.entry(key(line)).or_default();
        *sum = sum.saturating_add(line.micros);
    }
    sums
}

/// The UTC calendar day of an instant, `None` outside chrono's range.
pub fn utc_day(ms: i64) -> Option<NaiveDate> {
    let days = ms.div_euclid(MS_PER_DAY).checked_add(UNIX_EPOCH_DAYS_FROM_CE)?;
    NaiveDate::from_num_days_from_ce_opt(i32::try_from(days).ok()?)
}

/// The UTC (year, month) of an instant.
pub fn utc_month(ms: i64) -> Option<(i32, u32)> {
    use chrono::Datelike;
    utc_day(ms).map(|day| (day.year(), day.month()))
}

fn duration_ms(start_ms: i64, end_ms: i64) -> u64 {
    u64::try_from(end_ms as i128 - start_ms as i128).unwrap_or(0)
}

/// What `price_per_hour` costs for `duration_ms`, rounded half up to a whole micro (once per
/// machine interval: cost an interval whole, not hour by hour). Saturates at `u64::MAX`.
pub fn machine_cost(price_per_hour: MicrosPerHour, duration_ms: u64) -> u64 {
    let exact_times_hour = price_per_hour as u128 * duration_ms as u128;
    u64::try_from((exact_times_hour + MS_PER_HOUR / 2) / MS_PER_HOUR).unwrap_or(u64::MAX)
}

/// Divides `machine.cost()` among `tasks` and idle.
///
/// Each time slice between consecutive task starts and ends has its cpu part and memory part
/// (by `machine.split`); a task running through the slice gets `held / max(capacity, total held)`
/// of each part, where "held" is per `mode`. Task weights are summed over the slices and the
/// cost is apportioned once by largest remainder (ties to the earlier task, idle last).
///
/// Guarantees (see the tests): `allocated + idle == cost` exactly; each party within one micro
/// of its exact share; reporting idle, no task pays more than the machine cost for the time it
/// ran (rounded up); with [`IdlePolicy::ShareBack`] idle is 0 when any task overlapped the interval.
pub fn allocate(
    machine: &MachineInterval,
    tasks: &[TaskInterval],
    mode: AllocationMode,
    idle: IdlePolicy,
) -> Allocation {
    let cost = machine.cost();
    let duration = machine.duration_ms();
    let ids = |amounts: Vec<u64>| tasks.iter().map(|t| t.task_id.clone()).zip(amounts).collect();
    if duration == 0 {
        return Allocation { per_task: ids(vec![0; tasks.len()]), idle: 0 };
    }
    // The interval is worth `duration * units_per_ms <= u64::MAX` units, so `cost * weight`
    // never overflows a u128 in the apportionment.
    let units_per_ms = (u64::MAX / duration) as u128;
    let clipped: Vec<(i64, i64)> = tasks
        .iter()
        .map(|t| (t.start_ms.max(machine.start_ms), t.end_ms.min(machine.end_ms)))
        .map(|(start, end)| if start < end { (start, end) } else { (0, 0) })
        .collect();
    let mut cuts: Vec<i64> = vec![machine.start_ms, machine.end_ms];
    cuts.extend(clipped.iter().filter(|(s, e)| s < e).flat_map(|&(s, e)| [s, e]));
    cuts.sort_unstable();
    cuts.dedup();

    let held: Vec<Resources> = tasks.iter().map(|t| held(t, mode)).collect();
    let mut weights = vec![0u128; tasks.len()];
    let mut ran_ms = vec![0u128; tasks.len()];
    for slice in cuts.windows(2) {
        let (from, to) = (slice[0], slice[1]);
        let slice_ms = duration_ms(from, to) as u128;
        let (cpu_units, memory_units) = machine.split.divide(slice_ms * units_per_ms);
        let running: Vec<usize> = (0..tasks.len())
            .filter(|&i| clipped[i].0 < clipped[i].1 && clipped[i].0 <= from && to <= clipped[i].1)
            .collect();
        let total_cpu: u128 = running.iter().map(|&i| held[i].milli_cpu as u128).sum();
        let total_memory: u128 = running.iter().map(|&i| held[i].memory_bytes as u128).sum();
        let cpu_whole = total_cpu.max(machine.capacity.milli_cpu as u128);
        let memory_whole = total_memory.max(machine.capacity.memory_bytes as u128);
        for &i in &running {
            ran_ms[i] += slice_ms;
            // A resource nobody holds and the machine lacks is all idle.
            weights[i] += (cpu_units * held[i].milli_cpu as u128).checked_div(cpu_whole).unwrap_or(0);
            weights[i] += (memory_units * held[i].memory_bytes as u128).checked_div(memory_whole).unwrap_or(0);
        }
    }

    let allocated_weight: u128 = weights.iter().sum();
    match idle {
        IdlePolicy::Report => {
            // Per slice and resource the floored shares sum to at most the part, so this never
            // underflows.
            let idle_weight = duration as u128 * units_per_ms - allocated_weight;
            weights.push(idle_weight);
            let mut amounts = apportion(cost, &weights);
            let idle = amounts.pop().unwrap_or(0);
            Allocation { per_task: ids(amounts), idle }
        }
        IdlePolicy::ShareBack if allocated_weight > 0 => {
            Allocation { per_task: ids(apportion(cost, &weights)), idle: 0 }
        }
        // Tasks ran but held nothing: share by the time each ran.
        IdlePolicy::ShareBack if ran_ms.iter().any(|&ms| ms > 0) => {
            Allocation { per_task: ids(apportion(cost, &ran_ms)), idle: 0 }
        }
        IdlePolicy::ShareBack => Allocation { per_task: ids(vec![0; tasks.len()]), idle: cost },
    }
}

fn held(task: &TaskInterval, mode: AllocationMode) -> Resources {
    match (mode, task.usage) {
        (AllocationMode::MaxRequestUsage, Some(usage)) => Resources::new(
            task.request.milli_cpu.max(usage.milli_cpu),
            task.request.memory_bytes.max(usage.memory_bytes),
        ),
        _ => task.request,
    }
}

/// Splits `total` in proportion to `weights` by largest remainder: each gets the floor of its
/// exact quota, and the micros left over (fewer than the number of weights) go one each to the
/// largest remainders, ties to the lower index. The result sums to `total` exactly, unless every
/// weight is zero (then all get zero).
fn apportion(total: u64, weights: &[u128]) -> Vec<u64> {
    let mut sum: u128 = weights.iter().sum();
    // Keep `total * weight` inside u128: the weights this module builds already sum below 2^64;
    // others are scaled down (the result still sums exactly).
    let shift = (128 - sum.leading_zeros()).saturating_sub(64);
    let weights: Vec<u128> = weights.iter().map(|w| w >> shift).collect();
    sum = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut amounts = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (index, &weight) in weights.iter().enumerate() {
        let exact = total as u128 * weight;
        amounts.push((exact / sum) as u64);
        remainders.push((exact % sum, index));
    }
    let left_over = total - amounts.iter().sum::<u64>();
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, index) in remainders.iter().take(left_over as usize) {
        amounts[index] += 1;
    }
    amounts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;
    const MINUTE: i64 = 60_000;
    const START: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn machine(price_per_hour: u64, capacity: Resources, split: CostSplit, minutes: i64) -> MachineInterval {
        MachineInterval {
            machine_id: "m1".into(),
            provider: "aws".into(),
            region: "us-east-1".into(),
            offering: "m5.xlarge".into(),
            price_kind: PriceKind::OnDemand,
            price_per_hour,
            capacity,
            split,
            start_ms: START,
            end_ms: START + minutes * MINUTE,
        }
    }

    fn task(
        id: &str,
        team: &str,
        from_min: i64,
        to_min: i64,
        request: Resources,
        usage: Option<Resources>,
    ) -> TaskInterval {
        TaskInterval {
            task_id: id.into(),
            team: team.into(),
            app: format!("{id}-app"),
            start_ms: START + from_min * MINUTE,
            end_ms: START + to_min * MINUTE,
            request,
            usage,
        }
    }

    const EVEN: CostSplit = CostSplit { cpu: 1, memory: 1 };
    const CPU_ONLY: CostSplit = CostSplit { cpu: 1, memory: 0 };

    #[test]
    fn machine_cost_rounds_half_up_once() {
        assert_eq!(machine_cost(100_000, 90 * 60_000), 150_000); // $0.10/h for 90 minutes
        assert_eq!(machine_cost(1, 30 * 60_000), 1); // half a micro rounds up
        assert_eq!(machine_cost(1, 30 * 60_000 - 1), 0);
        assert_eq!(machine_cost(0, 1_000_000), 0);
        assert_eq!(machine_cost(u64::MAX, u64::MAX), u64::MAX);
    }

    /// $0.10/h, 4 cpu / 16 GiB, cost split evenly: 75,000 for cpu and 75,000 for memory over 90
    /// minutes. `a` (2 cpu, 4 GiB) runs throughout: 37,500 + 18,750. `b` (1 cpu, 8 GiB) leaves
    /// after 45 minutes: a quarter of 37,500 plus half of 37,500.
    fn ninety_minutes() -> (MachineInterval, Vec<TaskInterval>) {
        let m = machine(100_000, Resources::new(4000, 16 * GIB), EVEN, 90);
        let a = task("a", "red", 0, 90, Resources::new(2000, 4 * GIB), None);
        let b = task("b", "blue", 0, 45, Resources::new(1000, 8 * GIB), None);
        (m, vec![a, b])
    }

    #[test]
    fn hand_computed_ninety_minutes() {
        let (m, tasks) = ninety_minutes();
        let report = allocate(&m, &tasks, AllocationMode::Request, IdlePolicy::Report);
        assert_eq!(report.per_task, vec![("a".to_string(), 56_250), ("b".to_string(), 28_125)]);
        assert_eq!(report.idle, 65_625);
        // Idle shared back in proportion to 56,250 : 28,125 = 2 : 1.
        let shared = allocate(&m, &tasks, AllocationMode::Request, IdlePolicy::ShareBack);
        assert_eq!(shared.per_task, vec![("a".to_string(), 100_000), ("b".to_string(), 50_000)]);
        assert_eq!(shared.idle, 0);
    }

    #[test]
    fn overcommitted_usage_is_scaled_down_to_the_machine() {
        // 2 cpu, $1/h for an hour, all of it cpu. `a` asks 1 cpu but uses 3; `b` asks 1.
        let m = machine(1_000_000, Resources::new(2000, GIB), CPU_ONLY, 60);
        let tasks = vec![
            task("a", "red", 0, 60, Resources::new(1000, 0), Some(Resources::new(3000, 0))),
            task("b", "red", 0, 60, Resources::new(1000, 0), None),
        ];
        let by_request = allocate(&m, &tasks, AllocationMode::Request, IdlePolicy::Report);
        assert_eq!(by_request.per_task.iter().map(|p| p.1).collect::<Vec<_>>(), vec![500_000, 500_000]);
        let by_usage = allocate(&m, &tasks, AllocationMode::MaxRequestUsage, IdlePolicy::Report);
        // 3 : 1 of the machine; `b` pays less than by request, so "max mode never charges a task
        // less" does not hold once the machine is overcommitted.
        assert_eq!(by_usage.per_task.iter().map(|p| p.1).collect::<Vec<_>>(), vec![750_000, 250_000]);
        assert_eq!((by_request.idle, by_usage.idle), (0, 0));
    }

    #[test]
    fn left_over_micros_go_to_the_largest_remainders_then_the_earlier_task() {
        let m = machine(100, Resources::new(3000, GIB), CPU_ONLY, 60);
        let tasks: Vec<_> =
            ["x", "y", "z"].iter().map(|id| task(id, "t", 0, 60, Resources::new(1000, 0), None)).collect();
        let a = allocate(&m, &tasks, AllocationMode::Request, IdlePolicy::Report);
        assert_eq!(a.per_task.iter().map(|p| p.1).collect::<Vec<_>>(), vec![34, 33, 33]);
        assert_eq!(a.idle, 0);
    }

    #[test]
    fn tasks_outside_the_interval_pay_nothing_and_idle_machines_are_all_idle() {
        let (m, _) = ninety_minutes();
        let outside = vec![task("late", "t", 90, 120, Resources::new(4000, 16 * GIB), None)];
        for policy in [IdlePolicy::Report, IdlePolicy::ShareBack] {
            let a = allocate(&m, &outside, AllocationMode::Request, policy);
            assert_eq!((a.per_task[0].1, a.idle), (0, 150_000));
        }
        // Ran, but asked for nothing: shared back by time run.
        let empty = vec![task("p", "t", 0, 60, Resources::ZERO, None), task("q", "t", 60, 90, Resources::ZERO, None)];
        let a = allocate(&m, &empty, AllocationMode::Request, IdlePolicy::ShareBack);
        assert_eq!(a.per_task.iter().map(|p| p.1).collect::<Vec<_>>(), vec![100_000, 50_000]);
    }

    #[test]
    fn reference_split_prices_cpu_and_memory_like_opencost() {
        // 4 vCPU * 31,611 : 16 GiB * 4,237 = 126,444 : 67,792.
        let split = CostSplit::reference(Resources::new(4000, 16 * GIB));
        assert_eq!(split.cpu as u128 * 67_792, split.memory as u128 * 126_444);
        let huge = CostSplit::from_rates(
            Resources::new(u64::MAX, u64::MAX),
            &OwnedRates { per_vcpu_hour: u64::MAX, per_gib_hour: u64::MAX, per_gpu_hour: 0 },
        );
        assert!(huge.cpu > 0 && huge.memory > 0);
    }

    #[test]
    fn rollups_by_team_and_day() {
        // 23:00 to 01:00 across the year's first midnight.
        let mut m = machine(3_600_000, Resources::new(1000, GIB), CPU_ONLY, 120);
        m.start_ms = START - 60 * MINUTE;
        m.end_ms = START + 60 * MINUTE;
        let tasks = vec![TaskInterval {
            start_ms: m.start_ms,
            end_ms: m.end_ms,
            ..task("a", "red", 0, 0, Resources::new(500, 0), None)
        }];
        let pieces = m.split_by_utc_day();
        assert_eq!(pieces.len(), 2);
        let allocations: Vec<Allocation> =
            pieces.iter().map(|p| allocate(p, &tasks, AllocationMode::Request, IdlePolicy::Report)).collect();
        let lines: Vec<CostLine> = pieces.iter().zip(&allocations).flat_map(|(p, a)| a.lines(p, &tasks)).collect();
        let by_team = rollup(&lines, |l| l.team().map(str::to_owned));
        assert_eq!(by_team, BTreeMap::from([(None, 3_600_000), (Some("red".to_string()), 3_600_000)]));
        let by_day = rollup(&lines, |l| l.day());
        let dec31 = NaiveDate::from_ymd_opt(2025, 12, 31);
        let jan1 = NaiveDate::from_ymd_opt(2026, 1, 1);
        assert_eq!(by_day, BTreeMap::from([(dec31, 3_600_000), (jan1, 3_600_000)]));
        let by_month = rollup(&lines, |l| utc_month(l.machine.start_ms));
        assert_eq!(by_month.get(&Some((2026, 1))), Some(&3_600_000));
        assert_eq!(utc_day(-1), NaiveDate::from_ymd_opt(1969, 12, 31));
    }

    fn resources() -> impl Strategy<Value = Resources> {
        (0u64..=8_000, 0u64..=32 * GIB).prop_map(|(cpu, memory)| Resources::new(cpu, memory))
    }

    fn scenario() -> impl Strategy<Value = (MachineInterval, Vec<TaskInterval>)> {
        let machine_strategy = (0u64..=50_000_000, resources(), 0u64..=100, 0u64..=100, 1i64..=40 * 24 * 60);
        let one_task = (-30i64..=40 * 24 * 60, 0i64..=2_000, resources(), proptest::option::of(resources()));
        (machine_strategy, proptest::collection::vec(one_task, 0..8)).prop_map(
            |((price, capacity, cpu, memory, minutes), raw)| {
                let m = machine(price, capacity, CostSplit { cpu, memory }, minutes);
                let tasks = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (from, length, request, usage))| {
                        task(&format!("t{i}"), "t", from, from + length, request, usage)
                    })
                    .collect();
                (m, tasks)
            },
        )
    }

    fn ran_ms(m: &MachineInterval, t: &TaskInterval) -> u64 {
        duration_ms(t.start_ms.max(m.start_ms), t.end_ms.min(m.end_ms))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn allocated_plus_idle_is_the_cost_exactly((m, tasks) in scenario()) {
            let cost = m.cost();
            for mode in [AllocationMode::Request, AllocationMode::MaxRequestUsage] {
                for policy in [IdlePolicy::Report, IdlePolicy::ShareBack] {
                    let a = allocate(&m, &tasks, mode, policy);
                    prop_assert_eq!(a.per_task.len(), tasks.len());
                    prop_assert_eq!(a.allocated() + a.idle, cost);
                    prop_assert_eq!(a.idle, cost - a.allocated());
                    for ((id, micros), t) in a.per_task.iter().zip(&tasks) {
                        prop_assert_eq!(id, &t.task_id);
                        // Reporting idle, never more than the whole machine for the time it ran,
                        // rounded up (sharing idle back may charge a task for time it did not run).
                        let ceiling = (cost as u128 * ran_ms(&m, t) as u128).div_ceil(m.duration_ms() as u128);
                        prop_assert!(policy == IdlePolicy::ShareBack || *micros as u128 <= ceiling);
                    }
                }
            }
        }

        #[test]
        fn share_back_leaves_idle_only_when_no_task_ran((m, tasks) in scenario()) {
            let a = allocate(&m, &tasks, AllocationMode::Request, IdlePolicy::ShareBack);
            let any_ran = tasks.iter().any(|t| ran_ms(&m, t) > 0);
            prop_assert_eq!(a.idle, if any_ran { 0 } else { m.cost() });
        }

        #[test]
        fn charging_usage_never_increases_idle_beyond_rounding((m, tasks) in scenario()) {
            let by_request = allocate(&m, &tasks, AllocationMode::Request, IdlePolicy::Report);
            let by_usage = allocate(&m, &tasks, AllocationMode::MaxRequestUsage, IdlePolicy::Report);
            prop_assert!(by_usage.idle <= by_request.idle + 2);
        }

        #[test]
        fn without_overcommit_usage_never_charges_a_task_less((m, tasks) in scenario()) {
            // Make the machine big enough that no slice is overcommitted in either mode.
            let mut m = m;
            let total: Resources = tasks.iter().map(|t| held(t, AllocationMode::MaxRequestUsage)).sum();
            m.capacity += total;
            let by_request = allocate(&m, &tasks, AllocationMode::Request, IdlePolicy::Report);
            let by_usage = allocate(&m, &tasks, AllocationMode::MaxRequestUsage, IdlePolicy::Report);
            for (r, u) in by_request.per_task.iter().zip(&by_usage.per_task) {
                prop_assert!(u.1 + 1 >= r.1, "{} by request {} by usage {}", r.0, r.1, u.1);
            }
        }

        #[test]
        fn request_mode_ignores_usage((m, tasks) in scenario()) {
            let blind: Vec<TaskInterval> = tasks.iter().map(|t| TaskInterval { usage: None, ..t.clone() }).collect();
            prop_assert_eq!(
                allocate(&m, &tasks, AllocationMode::Request, IdlePolicy::Report),
                allocate(&m, &blind, AllocationMode::Request, IdlePolicy::Report)
            );
        }

        #[test]
        fn apportion_sums_exactly(
            total in any::<u64>(),
            weights in proptest::collection::vec(prop_oneof![0u128..=1_000_000, 0u128..=u64::MAX as u128 / 16], 1..10),
        ) {
            let amounts = apportion(total, &weights);
            let sum: u128 = weights.iter().sum();
            if sum == 0 {
                prop_assert!(amounts.iter().all(|&a| a == 0));
            } else {
                prop_assert_eq!(amounts.iter().map(|&a| a as u128).sum::<u128>(), total as u128);
            }
            if sum > 0 && sum <= u64::MAX as u128 {
                // Unscaled: each gets the floor or the ceiling of its exact quota.
                for (&amount, &weight) in amounts.iter().zip(&weights) {
                    let floor = total as u128 * weight / sum;
                    prop_assert!(amount as u128 == floor || amount as u128 == floor + 1);
                    prop_assert!(amount as u128 <= (total as u128 * weight).div_ceil(sum));
                }
            }
        }
    }
}
