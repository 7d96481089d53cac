//! What the pages show, computed from store rows: pure functions, so each is tested on
//! fixtures. Numbers are formatted here (money from integer micro-units, never floats), so the
//! templates only place text.

use crate::store::{EventRow, MachineRow, MachineUsage};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// Micro-units of money as dollars and cents, rounded half away from zero: `$1,234.57`.
pub fn money(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let cents = (i128::from(micros).abs() + 5_000) / 10_000;
    format!("{sign}${}.{:02}", thousands(cents / 100), cents % 100)
}

/// An hourly price, precise to a hundredth of a cent: `$0.0047`.
pub fn price(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let units = (i128::from(micros).abs() + 50) / 100;
    format!("{sign}${}.{:04}", thousands(units / 10_000), units % 10_000)
}

fn thousands(value: i128) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Milli-cpus as cpus: `2`, `1.5`, `0.25`.
pub fn cpus(milli: i64) -> String {
    let whole = milli / 1000;
    let fraction = (milli % 1000).abs();
    if fraction == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{fraction:03}").trim_end_matches('0'))
    }
}

/// Bytes in binary units with one decimal: `512 MiB`, `1.5 GiB`.
pub fn bytes(value: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scaled = value.max(0) as f64;
    while scaled >= 1024.0 && unit < UNITS.len() - 1 {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 || scaled.fract() == 0.0 {
        format!("{scaled:.0} {}", UNITS[unit])
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

/// `part` of `whole` as a whole percentage (`-` when there is no whole).
pub fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        "-".into()
    } else {
        format!("{}%", (i128::from(part) * 100 + i128::from(whole) / 2) / i128::from(whole))
    }
}

/// Machines that are paid for and part of the pool: everything not yet terminated or failed.
fn is_live(state: &str) -> bool {
    !matches!(state, "terminated" | "failed")
}

/// One provider and region of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolRow {
    pub provider: String,
    pub region: String,
    pub machines: usize,
    pub ready: usize,
    pub cpu: String,
    pub memory: String,
    pub cpu_allocated: String,
    pub memory_allocated: String,
    pub hourly_cost: String,
    pub daily_cost: String,
    pub hourly_micros: i64,
}

/// The pool by provider and region, plus a total row: live machines, their capacity, what
/// is allocated on them, and what they cost per hour.
pub fn pool(machines: &[MachineRow]) -> (Vec<PoolRow>, PoolRow) {
    #[derive(Default)]
    struct Sum {
        machines: usize,
        ready: usize,
        cpu: i64,
        memory: i64,
        cpu_allocated: i64,
        memory_allocated: i64,
        cost: i64,
    }
    impl Sum {
        fn add(&mut self, m: &MachineRow) {
            self.machines += 1;
            self.ready += usize::from(m.state == "ready");
            self.cpu += m.capacity_milli_cpu;
            self.memory += m.capacity_memory;
            self.cpu_allocated += m.allocated_milli_cpu;
            self.memory_allocated += m.allocated_memory;
            self.cost += m.price_micros;
        }
        fn row(&self, provider: &str, region: &str) -> PoolRow {
            PoolRow {
                provider: provider.into(),
                region: region.into(),
                machines: self.machines,
                ready: self.ready,
                cpu: cpus(self.cpu),
                memory: bytes(self.memory),
                cpu_allocated: format!("{} ({})", cpus(self.cpu_allocated), percent(self.cpu_allocated, self.cpu)),
                memory_allocated: format!(
                    "{} ({})",
                    bytes(self.memory_allocated),
                    percent(self.memory_allocated, self.memory)
                ),
                hourly_cost: price(self.cost),
                daily_cost: money(self.cost.saturating_mul(24)),
                hourly_micros: self.cost,
            }
        }
    }
    let mut groups: BTreeMap<(&str, &str), Sum> = BTreeMap::new();
    let mut total = Sum::default();
    for machine in machines.iter().filter(|m| is_live(&m.state)) {
        groups.entry((&machine.provider, &machine.region)).or_default().add(machine);
        total.add(machine);
    }
    let rows = groups.iter().map(|((provider, region), sum)| sum.row(provider, region)).collect();
    (rows, total.row("all", ""))
}

/// One machine as the machines page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineView {
    pub name: String,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub offering: String,
    pub spot: bool,
    pub state: String,
    pub state_reason: String,
    pub price: String,
    pub cpu: String,
    pub memory: String,
    pub cpu_allocated: String,
    pub memory_allocated: String,
    pub memory_used: String,
    pub cpu_used: String,
    pub tasks: i64,
    pub address: String,
    pub last_heartbeat: String,
}

pub fn machines(rows: &[MachineRow], usage: &[MachineUsage]) -> Vec<MachineView> {
    let usage: HashMap<Uuid, MachineUsage> = usage.iter().map(|u| (u.machine_id, *u)).collect();
    rows.iter()
        .map(|m| {
            let used = usage.get(&m.id);
            let memory = used.map_or(0, |u| u.memory_bytes);
            // Cpu microseconds over what the machine's cpus could give in the window.
            let cpu_possible =
                used.map_or(0, |u| u.window_seconds.saturating_mul(m.capacity_milli_cpu).saturating_mul(1000));
            MachineView {
                name: m.name.clone(),
                provider: m.provider.clone(),
                region: m.region.clone(),
                zone: m.zone.clone(),
                offering: m.offering.clone(),
                spot: m.spot,
                state: m.state.clone(),
                state_reason: m.state_reason.clone(),
                price: price(m.price_micros),
                cpu: cpus(m.capacity_milli_cpu),
                memory: bytes(m.capacity_memory),
                cpu_allocated: percent(m.allocated_milli_cpu, m.capacity_milli_cpu),
                memory_allocated: percent(m.allocated_memory, m.capacity_memory),
                memory_used: percent(memory, m.capacity_memory),
                cpu_used: percent(used.map_or(0, |u| u.cpu_usec), cpu_possible),
                tasks: m.tasks,
                address: m.address.clone(),
                last_heartbeat: timestamp(&m.last_heartbeat),
            }
        })
        .collect()
}

/// One audit-log entry, readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView {
    pub at: String,
    pub actor: String,
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

pub fn events(rows: &[EventRow]) -> Vec<EventView> {
    rows.iter()
        .map(|e| EventView {
            at: timestamp(&e.at),
            actor: e.actor.clone(),
            kind: e.kind.clone(),
            subject: e.subject.clone(),
            detail: detail(&e.detail),
        })
        .collect()
}

/// An event's detail as `key=value` pairs (nested values as JSON).
fn detail(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

pub fn timestamp(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn machine(name: &str, provider: &str, region: &str, state: &str) -> MachineRow {
        MachineRow {
            id: Uuid::new_v4(),
            name: name.into(),
            provider: provider.into(),
            address: "10.0.0.1".into(),
            state: state.into(),
            capacity_milli_cpu: 2000,
            capacity_memory: 4 << 30,
            allocated_milli_cpu: 500,
            allocated_memory: 1 << 30,
            tasks: 2,
            cgroup_version: 1,
            labels: serde_json::json!({}),
            region: region.into(),
            zone: format!("{region}a"),
            offering: "t3a.medium".into(),
            spot: false,
            price_micros: 37_600,
            provider_id: None,
            state_reason: String::new(),
            last_heartbeat: chrono::DateTime::UNIX_EPOCH,
            created_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn money_rounds_half_away_from_zero_and_groups_thousands() {
        assert_eq!(money(0), "$0.00");
        assert_eq!(money(4_999), "$0.00");
        assert_eq!(money(5_000), "$0.01");
        assert_eq!(money(1_234_567_891), "$1,234.57");
        assert_eq!(money(-1_234_567_891), "-$1,234.57");
        assert_eq!(money(999_995_000), "$1,000.00");
        assert_eq!(money(i64::MAX), "$9,223,372,036,854.78");
        assert_eq!(price(4_700), "$0.0047");
        assert_eq!(price(37_650), "$0.0377");
        assert_eq!(price(1_500_000), "$1.5000");
    }

    #[test]
    fn quantities_read_like_the_cli() {
        assert_eq!(cpus(2000), "2");
        assert_eq!(cpus(1500), "1.5");
        assert_eq!(cpus(250), "0.25");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(percent(1, 3), "33%");
        assert_eq!(percent(2, 3), "67%");
        assert_eq!(percent(5, 0), "-");
    }

    #[test]
    fn the_pool_groups_live_machines_by_provider_and_region() {
        let rows = vec![
            machine("a", "aws", "us-east-1", "ready"),
            machine("b", "aws", "us-east-1", "booting"),
            machine("c", "azure", "westeurope", "ready"),
            machine("d", "aws", "us-east-1", "terminated"),
            machine("e", "aws", "us-east-1", "failed"),
        ];
        let (groups, total) = pool(&rows);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].provider.as_str(), groups[0].machines, groups[0].ready), ("aws", 2, 1));
        assert_eq!(groups[0].cpu, "4");
        assert_eq!(groups[0].cpu_allocated, "1 (25%)");
        assert_eq!(groups[0].memory_allocated, "2 GiB (25%)");
        assert_eq!(groups[0].hourly_cost, "$0.0752");
        assert_eq!((total.machines, total.ready), (3, 2));
        assert_eq!(total.hourly_cost, "$0.1128");
        assert_eq!(total.daily_cost, "$2.71");
    }

    #[test]
    fn machines_show_use_beside_allocation() {
        let row = machine("a", "aws", "us-east-1", "ready");
        // 2 cpus for 100 s could give 200 cpu-seconds; tasks used 50.
        let usage =
            MachineUsage { machine_id: row.id, memory_bytes: 1 << 30, cpu_usec: 50_000_000, window_seconds: 100 };
        let views = machines(std::slice::from_ref(&row), &[usage]);
        assert_eq!(views[0].memory_allocated, "25%");
        assert_eq!(views[0].memory_used, "25%");
        assert_eq!(views[0].cpu_used, "25%");
        assert_eq!(views[0].price, "$0.0376");
        let unknown = machines(&[row], &[]);
        assert_eq!((unknown[0].memory_used.as_str(), unknown[0].cpu_used.as_str()), ("0%", "-"));
    }

    #[test]
    fn event_details_read_as_pairs() {
        let row = EventRow {
            id: 1,
            at: chrono::DateTime::UNIX_EPOCH,
            actor: "developer:dev".into(),
            kind: "app.scaled".into(),
            subject: "web".into(),
            detail: serde_json::json!({"from": 2, "to": 3, "why": "load"}),
        };
        let views = events(&[row]);
        assert_eq!(views[0].detail, "from=2 to=3 why=load");
        assert_eq!(views[0].at, "1970-01-01 00:00:00 UTC");
    }
}
