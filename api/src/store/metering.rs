//! Metering: the machine ledger (what each machine cost, from when its row was created until it
//! was terminated, at the hourly price on its row) and its allocation to the tasks that ran on
//! it with `canopy_core::cost`, per UTC day.
//!
//! [`Store::team_spend`] computes a team's month-to-date spend and run rate live from the
//! ledger; the reports read the same ledger materialised per day (`machine_days`, `cost_days`,
//! written by [`Store::meter`]), so both agree to the micro. A machine is billed from the moment
//! Canopy records it (before the provider call) to its termination; machines joined by hand
//! carry a price of 0.

use super::{Result, Store, StoreError};
use canopy_core::Resources;
use canopy_core::cost::{AllocationMode, CostSplit, IdlePolicy, MachineInterval, PriceKind, TaskInterval, allocate};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

const MS_PER_DAY: i64 = 86_400_000;
const MS_PER_HOUR: i64 = 3_600_000;

/// One provider's part of a team's spend, in micro-dollars.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProviderSpend {
    pub provider: String,
    /// Allocated to the team's tasks from the first instant of `now`'s UTC month until `now`.
    pub month_to_date_micros: u64,
    /// What the team's tasks running at `now` cost per hour on the machines they run on.
    pub hourly_run_rate_micros: u64,
}

/// How machine cost is divided (the `settings` row: `cost_allocation`, `cost_share_idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CostPolicy {
    pub mode: AllocationMode,
    pub idle: IdlePolicy,
}

/// One machine over one UTC day (or the part of it in the window), with its cost divided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MachineDay {
    pub day: NaiveDate,
    pub machine_id: Uuid,
    pub provider: String,
    pub region: String,
    pub offering: String,
    pub price_kind: PriceKind,
    pub ms: u64,
    pub cost: u64,
    pub idle: u64,
    /// Milli-cpu seconds and byte seconds of capacity over `ms`.
    pub cpu_capacity: u64,
    pub memory_capacity: u64,
    pub apps: Vec<AppCharge>,
}

/// An app's tasks' share of a machine-day, and what they requested and used (milli-cpu seconds,
/// byte seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AppCharge {
    pub app_id: Uuid,
    pub team_id: Uuid,
    pub micros: u64,
    pub cpu_requested: u64,
    pub cpu_used: u64,
    pub memory_requested: u64,
    pub memory_used: u64,
}

pub(super) fn price_kind_name(kind: PriceKind) -> &'static str {
    match kind {
        PriceKind::OnDemand => "on-demand",
        PriceKind::Spot => "spot",
        PriceKind::Owned => "owned",
    }
}

#[derive(sqlx::FromRow)]
struct LedgerMachineRow {
    id: Uuid,
    provider: String,
    region: String,
    offering: String,
    spot: bool,
    sunk: bool,
    price_micros: i64,
    capacity_milli_cpu: i64,
    capacity_memory: i64,
    start_ms: i64,
    end_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct LedgerTaskRow {
    id: Uuid,
    machine_id: Uuid,
    app_id: Uuid,
    team_id: Uuid,
    milli_cpu: i64,
    memory: i64,
    start_ms: i64,
    end_ms: Option<i64>,
}

/// A task's usage over one UTC day: cpu microseconds, memory byte seconds and the time the
/// memory integral covers.
#[derive(sqlx::FromRow, Clone, Copy)]
struct UsageRow {
    task_id: Uuid,
    day: i64,
    cpu_usec: i64,
    memory_byte_seconds: i64,
    memory_sampled_ms: i64,
}

/// What the ledger of a window is computed from.
pub(super) struct LedgerInput {
    from_ms: i64,
    to_ms: i64,
    machines: Vec<LedgerMachineRow>,
    tasks: Vec<LedgerTaskRow>,
    usage: Vec<UsageRow>,
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn instant(ms: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single().ok_or_else(|| StoreError::Invalid(format!("instant {ms} out of range")))
}

/// The first instant of `now`'s UTC month.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let first = NaiveDate::from_ymd_opt(now.year(), now.month(), 1).unwrap_or(now.date_naive());
    first.and_time(chrono::NaiveTime::MIN).and_utc()
}

impl Store {
    /// A team's month-to-date spend and current hourly run rate per provider, in micro-dollars,
    /// as of `now`, sorted by provider.
    ///
    /// Computed live from the machine ledger: every machine that ran one of the team's tasks
    /// in the window is costed per UTC day and divided among all its tasks by the configured
    /// [`CostPolicy`]; the team's share is summed per provider. Month to date covers
    /// `[first instant of now's UTC month, now)`; the run rate is the same division over
    /// `[now, now + 1 hour)` for the machines and tasks live at `now` (requests only: usage in
    /// the future is unknown). Providers where the team has neither are left out. Cost grows
    /// with the number of the team's machines this month, not with the whole pool.
    #[tracing::instrument(skip_all, fields(team = %team))]
    pub async fn team_spend(&self, team: Uuid, now: DateTime<Utc>) -> Result<Vec<ProviderSpend>> {
        let mut tx = self.begin().await?;
        let policy = cost_policy(&mut tx).await?;
        let month = ledger_input(&mut tx, ms(month_start(now)), ms(now), Some(team)).await?;
        let next_hour = ledger_input(&mut tx, ms(now), ms(now) + MS_PER_HOUR, Some(team)).await?;
        tx.commit().await?;
        let mut spend: BTreeMap<String, ProviderSpend> = BTreeMap::new();
        for (input, run_rate) in [(month, false), (next_hour, true)] {
            for day in ledger(&input, policy) {
                let mut charges = day.apps.iter().filter(|a| a.team_id == team).peekable();
                if charges.peek().is_none() {
                    continue;
                }
                let micros: u64 = charges.map(|a| a.micros).sum();
                let entry = spend
                    .entry(day.provider.clone())
                    .or_insert_with(|| ProviderSpend { provider: day.provider, ..Default::default() });
                if run_rate {
                    entry.hourly_run_rate_micros += micros;
                } else {
                    entry.month_to_date_micros += micros;
                }
            }
        }
        Ok(spend.into_values().collect())
    }
}

impl CostPolicy {
    /// `request` or `max-request-usage`.
    pub fn allocation_name(&self) -> &'static str {
        match self.mode {
            AllocationMode::Request => "request",
            AllocationMode::MaxRequestUsage => "max-request-usage",
        }
    }

    pub fn share_idle(&self) -> bool {
        self.idle == IdlePolicy::ShareBack
    }
}

impl Store {
    /// How machine cost is divided now.
    pub async fn cost_policy(&self) -> Result<CostPolicy> {
        let mut tx = self.begin().await?;
        let policy = cost_policy(&mut tx).await?;
        tx.commit().await?;
        Ok(policy)
    }

    /// Changes how machine cost is divided, recording `settings.cost_policy`. It applies to the
    /// days metered from now on: today (and yesterday in its hour of grace) are recomputed with
    /// it; final days keep what they were metered with.
    #[tracing::instrument(skip_all)]
    pub async fn set_cost_policy(&self, actor: &str, policy: CostPolicy) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE settings SET cost_allocation = $1, cost_share_idle = $2")
            .bind(policy.allocation_name())
            .bind(policy.share_idle())
            .execute(&mut *tx)
            .await?;
        let detail = serde_json::json!({"allocation": policy.allocation_name(), "share_idle": policy.share_idle()});
        super::record(&mut tx, actor, "settings.cost_policy", "cost-policy", None, detail).await?;
        tx.commit().await?;
        Ok(())
    }
}

pub(super) async fn cost_policy(tx: &mut Transaction<'static, Postgres>) -> Result<CostPolicy> {
    let (allocation, share_idle): (String, bool) =
        sqlx::query_as("SELECT cost_allocation, cost_share_idle FROM settings").fetch_one(&mut **tx).await?;
    let mode = match allocation.as_str() {
        "request" => AllocationMode::Request,
        "max-request-usage" => AllocationMode::MaxRequestUsage,
        other => return Err(StoreError::Corrupt(format!("settings.cost_allocation: {other}"))),
    };
    Ok(CostPolicy { mode, idle: if share_idle { IdlePolicy::ShareBack } else { IdlePolicy::Report } })
}

/// Loads what the ledger over `[from_ms, to_ms)` needs: machines that existed in it (only those
/// that ran one of `team`'s tasks in it, when given), the tasks that ran on them, and those
/// tasks' usage per UTC day. Intervals still open end at `to_ms`.
pub(super) async fn ledger_input(
    tx: &mut Transaction<'static, Postgres>,
    from_ms: i64,
    to_ms: i64,
    team: Option<Uuid>,
) -> Result<LedgerInput> {
    let (from, to) = (instant(from_ms)?, instant(to_ms)?);
    let machines = sqlx::query_as::<_, LedgerMachineRow>(
        "SELECT m.id, m.provider, m.region, m.offering, m.spot, m.sunk, m.price_micros, m.capacity_milli_cpu,
                m.capacity_memory, (EXTRACT(EPOCH FROM m.created_at) * 1000)::bigint AS start_ms,
                (EXTRACT(EPOCH FROM m.terminated_at) * 1000)::bigint AS end_ms
         FROM machines m
         WHERE m.created_at < $2 AND (m.terminated_at IS NULL OR m.terminated_at > $1)
           AND ($3::uuid IS NULL OR EXISTS (
                SELECT 1 FROM tasks t JOIN apps a ON a.id = t.app_id
                WHERE t.machine_id = m.id AND a.team_id = $3
                  AND t.started_at < $2 AND (t.finished_at IS NULL OR t.finished_at > $1)))
         ORDER BY m.id",
    )
    .bind(from)
    .bind(to)
    .bind(team)
    .fetch_all(&mut **tx)
    .await?;
    let ids: Vec<Uuid> = machines.iter().map(|m| m.id).collect();
    let tasks = sqlx::query_as::<_, LedgerTaskRow>(
        "SELECT t.id, t.machine_id, t.app_id, a.team_id, t.milli_cpu, t.memory,
                (EXTRACT(EPOCH FROM t.started_at) * 1000)::bigint AS start_ms,
                (EXTRACT(EPOCH FROM t.finished_at) * 1000)::bigint AS end_ms
         FROM tasks t JOIN apps a ON a.id = t.app_id
         WHERE t.machine_id = ANY($3) AND t.started_at < $2 AND (t.finished_at IS NULL OR t.finished_at > $1)
         ORDER BY t.machine_id, t.started_at, t.id",
    )
    .bind(from)
    .bind(to)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let task_ids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
    let usage = sqlx::query_as::<_, UsageRow>(
        "SELECT task_id, floor(EXTRACT(EPOCH FROM hour) / 86400)::bigint AS day,
                SUM(cpu_usec)::bigint AS cpu_usec, SUM(memory_byte_seconds)::bigint AS memory_byte_seconds,
                SUM(memory_sampled_ms)::bigint AS memory_sampled_ms
         FROM task_usage_hours
         WHERE task_id = ANY($3) AND hour >= date_trunc('hour', $1::timestamptz, 'UTC') AND hour < $2
         GROUP BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .bind(&task_ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(LedgerInput { from_ms, to_ms, machines, tasks, usage })
}

/// The ledger of loaded rows: each machine's part of the window cut at UTC midnights, costed
/// and divided among its tasks by `policy`, the tasks' charges summed per app.
pub(super) fn ledger(input: &LedgerInput, policy: CostPolicy) -> Vec<MachineDay> {
    let usage: HashMap<(Uuid, i64), &UsageRow> = input.usage.iter().map(|u| ((u.task_id, u.day), u)).collect();
    let mut tasks_by_machine: HashMap<Uuid, Vec<&LedgerTaskRow>> = HashMap::new();
    for task in &input.tasks {
        tasks_by_machine.entry(task.machine_id).or_default().push(task);
    }
    let clip = |start: i64, end: Option<i64>, from: i64, to: i64| (start.max(from), end.unwrap_or(input.to_ms).min(to));
    let mut days = Vec::new();
    for machine in &input.machines {
        let (start_ms, end_ms) = clip(machine.start_ms, machine.end_ms, input.from_ms, input.to_ms);
        if start_ms >= end_ms {
            continue;
        }
        let capacity = Resources::new(machine.capacity_milli_cpu.max(0) as u64, machine.capacity_memory.max(0) as u64);
        let whole = MachineInterval {
            machine_id: machine.id.to_string(),
            provider: machine.provider.clone(),
            region: machine.region.clone(),
            offering: machine.offering.clone(),
            price_kind: match (machine.sunk, machine.spot) {
                (true, _) => PriceKind::Owned,
                (false, true) => PriceKind::Spot,
                (false, false) => PriceKind::OnDemand,
            },
            price_per_hour: machine.price_micros.max(0) as u64,
            capacity,
            split: CostSplit::reference(capacity),
            start_ms,
            end_ms,
        };
        let on_machine = tasks_by_machine.get(&machine.id).map(Vec::as_slice).unwrap_or_default();
        for piece in whole.split_by_utc_day() {
            let Some(day) = canopy_core::cost::utc_day(piece.start_ms) else { continue };
            let day_number = piece.start_ms.div_euclid(MS_PER_DAY);
            let mut ran: Vec<(&LedgerTaskRow, u64, Option<&UsageRow>)> = Vec::new();
            let mut intervals: Vec<TaskInterval> = Vec::new();
            for task in on_machine {
                let (start, end) = clip(task.start_ms, task.end_ms, piece.start_ms, piece.end_ms);
                if start >= end {
                    continue;
                }
                let ran_ms = (end - start) as u64;
                let used = usage.get(&(task.id, day_number)).copied();
                intervals.push(TaskInterval {
                    task_id: task.id.to_string(),
                    team: task.team_id.to_string(),
                    app: task.app_id.to_string(),
                    start_ms: start,
                    end_ms: end,
                    request: Resources::new(task.milli_cpu.max(0) as u64, task.memory.max(0) as u64),
                    usage: used.map(|u| average_usage(u, ran_ms)),
                });
                ran.push((task, ran_ms, used));
            }
            let allocation = allocate(&piece, &intervals, policy.mode, policy.idle);
            let mut apps: Vec<AppCharge> = Vec::new();
            for ((task, ran_ms, used), (_, micros)) in ran.into_iter().zip(&allocation.per_task) {
                let index = match apps.iter().position(|a| a.app_id == task.app_id) {
                    Some(index) => index,
                    None => {
                        apps.push(AppCharge {
                            app_id: task.app_id,
                            team_id: task.team_id,
                            micros: 0,
                            cpu_requested: 0,
                            cpu_used: 0,
                            memory_requested: 0,
                            memory_used: 0,
                        });
                        apps.len() - 1
                    }
                };
                let charge = &mut apps[index];
                charge.micros += micros;
                charge.cpu_requested += seconds_of(task.milli_cpu.max(0) as u64, ran_ms);
                charge.memory_requested += seconds_of(task.memory.max(0) as u64, ran_ms);
                if let Some(used) = used {
                    charge.cpu_used += used.cpu_usec.max(0) as u64 / 1000;
                    charge.memory_used += used.memory_byte_seconds.max(0) as u64;
                }
            }
            let ms = piece.duration_ms();
            days.push(MachineDay {
                day,
                machine_id: machine.id,
                provider: piece.provider.clone(),
                region: piece.region.clone(),
                offering: piece.offering.clone(),
                price_kind: piece.price_kind,
                ms,
                cost: allocation.allocated() + allocation.idle,
                idle: allocation.idle,
                cpu_capacity: seconds_of(capacity.milli_cpu, ms),
                memory_capacity: seconds_of(capacity.memory_bytes, ms),
                apps,
            });
        }
    }
    days
}

/// `amount` held for `ms` milliseconds, in amount-seconds (floored, saturating).
fn seconds_of(amount: u64, ms: u64) -> u64 {
    u64::try_from(amount as u128 * ms as u128 / 1000).unwrap_or(u64::MAX)
}

/// A task's average usage over the `ran_ms` it ran in a day: cpu microseconds per millisecond
/// are milli-cpus; memory is the sampled integral over the time it covers.
fn average_usage(used: &UsageRow, ran_ms: u64) -> Resources {
    let cpu = used.cpu_usec.max(0) as u64 / ran_ms.max(1);
    let memory = (used.memory_byte_seconds.max(0) as u128 * 1000)
        .checked_div(used.memory_sampled_ms.max(0) as u128)
        .unwrap_or(0);
    Resources::new(cpu, u64::try_from(memory).unwrap_or(u64::MAX))
}

/// Days whose ledger may still change: the day `now` is in, and the day before during the
/// first hour of the next (late heartbeats attribute usage to the hour they arrive in).
const FINAL_AFTER_MS: i64 = MS_PER_HOUR;

impl Store {
    /// Materialises the ledger per UTC day into `machine_days` and `cost_days` (what the
    /// reports read): every day from the first not yet final one up to `now`'s day is computed
    /// again from the machines, tasks and usage rows, each day in one transaction. A day is
    /// final once `now` is an hour past its end. Returns the days written, or `None` when
    /// another replica's controllers lead.
    #[tracing::instrument(skip_all)]
    pub async fn meter(&self, now: DateTime<Utc>) -> Result<Option<usize>> {
        let now_ms = ms(now);
        let Some(mut tx) = self.begin_leader().await? else { return Ok(None) };
        let (through, first_machine): (Option<NaiveDate>, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT metered_through, (SELECT min(created_at) FROM machines) FROM settings")
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        let (Some(mut day), Some(today)) =
            (through.or(first_machine.map(|at| at.date_naive())), canopy_core::cost::utc_day(now_ms))
        else {
            return Ok(Some(0));
        };
        let mut written = 0;
        while day <= today {
            let Some(mut tx) = self.begin_leader().await? else { return Ok(None) };
            let start_ms = ms(day.and_time(chrono::NaiveTime::MIN).and_utc());
            let end_ms = (start_ms + MS_PER_DAY).min(now_ms);
            if start_ms < end_ms {
                let policy = cost_policy(&mut tx).await?;
                let input = ledger_input(&mut tx, start_ms, end_ms, None).await?;
                write_day(&mut tx, day, &ledger(&input, policy)).await?;
                written += 1;
            }
            let Some(next) = day.succ_opt() else { break };
            if now_ms >= start_ms + MS_PER_DAY + FINAL_AFTER_MS {
                sqlx::query("UPDATE settings SET metered_through = $1").bind(next).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            day = next;
        }
        Ok(Some(written))
    }
}

/// Replaces the materialised rows of `day` with `days` (all of that day).
async fn write_day(tx: &mut Transaction<'static, Postgres>, day: NaiveDate, days: &[MachineDay]) -> Result<()> {
    sqlx::query("DELETE FROM cost_days WHERE day = $1").bind(day).execute(&mut **tx).await?;
    sqlx::query("DELETE FROM machine_days WHERE day = $1").bind(day).execute(&mut **tx).await?;
    let int = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let mut machines = MachineColumns::default();
    let mut apps = AppColumns::default();
    for d in days.iter().filter(|d| d.day == day) {
        machines.id.push(d.machine_id);
        machines.provider.push(d.provider.clone());
        machines.region.push(d.region.clone());
        machines.offering.push(d.offering.clone());
        machines.price_kind.push(price_kind_name(d.price_kind).to_string());
        machines.numbers.push([d.ms, d.cost, d.idle, d.cpu_capacity, d.memory_capacity].map(int));
        for a in &d.apps {
            apps.machine.push(d.machine_id);
            apps.app.push(a.app_id);
            apps.team.push(a.team_id);
            apps.provider.push(d.provider.clone());
            apps.region.push(d.region.clone());
            apps.offering.push(d.offering.clone());
            apps.numbers.push([a.micros, a.cpu_requested, a.cpu_used, a.memory_requested, a.memory_used].map(int));
        }
    }
    let column = |rows: &[[i64; 5]], i: usize| rows.iter().map(|r| r[i]).collect::<Vec<i64>>();
    sqlx::query(
        "INSERT INTO machine_days (day, machine_id, provider, region, offering, price_kind, ms, cost_micros,
                idle_micros, cpu_capacity, memory_capacity)
         SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])",
    )
    .bind(day)
    .bind(&machines.id)
    .bind(&machines.provider)
    .bind(&machines.region)
    .bind(&machines.offering)
    .bind(&machines.price_kind)
    .bind(column(&machines.numbers, 0))
    .bind(column(&machines.numbers, 1))
    .bind(column(&machines.numbers, 2))
    .bind(column(&machines.numbers, 3))
    .bind(column(&machines.numbers, 4))
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO cost_days (day, machine_id, app_id, team_id, provider, region, offering, micros, cpu_requested,
                cpu_used, memory_requested, memory_used)
         SELECT $1, * FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[])",
    )
    .bind(day)
    .bind(&apps.machine)
    .bind(&apps.app)
    .bind(&apps.team)
    .bind(&apps.provider)
    .bind(&apps.region)
    .bind(&apps.offering)
    .bind(column(&apps.numbers, 0))
    .bind(column(&apps.numbers, 1))
    .bind(column(&apps.numbers, 2))
    .bind(column(&apps.numbers, 3))
    .bind(column(&apps.numbers, 4))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Default)]
struct MachineColumns {
    id: Vec<Uuid>,
    provider: Vec<String>,
    region: Vec<String>,
    offering: Vec<String>,
    price_kind: Vec<String>,
    /// ms, cost, idle, cpu capacity, memory capacity.
    numbers: Vec<[i64; 5]>,
}

#[derive(Default)]
struct AppColumns {
    machine: Vec<Uuid>,
    app: Vec<Uuid>,
    team: Vec<Uuid>,
    provider: Vec<String>,
    region: Vec<String>,
    offering: Vec<String>,
    /// micros, cpu requested, cpu used, memory requested, memory used.
    numbers: Vec<[i64; 5]>,
}
