//! A generator of metering history: teams, apps and jobs, machines bought and given back over
//! past days on AWS, Azure, OpenStack and bare metal (real catalog prices; owned capacity at
//! the reference rates), the tasks that ran on them, and their usage (one row per task and
//! day), which [`Store::meter`] then turns into the ledger. For the P11 benchmark (a year of
//! 1,000 machines) and the demo (a few weeks, so the finance pages show something real).
//! Deterministic for a seed.
//!
//! Everything it writes is over: machines are terminated and apps deleted by `end`, so the
//! controllers never act on them; only the reports see them.

use super::{Result, Store, StoreError, record};
use canopy_core::schedule::{Catalog, OwnedRates};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const GIB: i64 = 1 << 30;

/// Teams and their apps; names ending in `-nightly`, `-etl`, `train-` or `backfill` are batch
/// jobs (runs of a few hours), the rest services (a task for the machine's whole life).
const TEAMS: [(&str, &[&str]); 8] = [
    ("payments", &["api", "ledger", "fraud-score", "settle-nightly"]),
    ("search", &["query", "indexer", "crawl-etl"]),
    ("ml", &["train-ranker", "feature-etl", "serve-model"]),
    ("web", &["frontend", "sessions", "images"]),
    ("analytics", &["warehouse-etl", "dashboards", "reports-nightly"]),
    ("platform", &["gateway", "metrics", "logs"]),
    ("mobile", &["push", "sync"]),
    ("data", &["kafka-mirror", "cdc", "backfill"]),
];

/// Machine kinds: provider, region, instance type, spot, share of the fleet (percent).
const KINDS: [(&str, &str, &str, bool, u64); 9] = [
    ("aws", "us-east-1", "m5.2xlarge", false, 16),
    ("aws", "us-east-1", "c5.4xlarge", false, 8),
    ("aws", "us-east-1", "r5.2xlarge", false, 8),
    ("aws", "us-east-1", "m5.2xlarge", true, 8),
    ("azure", "eastus", "Standard_D8s_v5", false, 14),
    ("azure", "eastus", "Standard_E8s_v5", true, 6),
    ("azure", "westeurope", "Standard_D8s_v5", false, 10),
    ("openstack", "regionone", "m1.xlarge", false, 15),
    ("baremetal", "onprem", "bm-32c-128g", false, 15),
];

#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Machines running at any time (each slot buys a new one when the last is given back).
    pub machines: u32,
    pub days: u32,
    /// The history ends here (every machine terminated, every task finished).
    pub end: DateTime<Utc>,
    pub seed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistorySummary {
    pub machines: usize,
    pub tasks: usize,
    pub usage_rows: usize,
    pub metered_days: usize,
}

/// splitmix64: small, fast, good enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high` (`low` when empty).
    fn range(&mut self, low: i64, high: i64) -> i64 {
        if high <= low { low } else { low + (self.next() % (high - low) as u64) as i64 }
    }
}

struct Kind {
    provider: &'static str,
    region: &'static str,
    offering: &'static str,
    spot: bool,
    sunk: bool,
    weight: u64,
    milli_cpu: i64,
    memory: i64,
    price: i64,
}

/// The kinds whose instance type the catalog knows (owned ones priced by `rates`).
fn kinds(catalog: &Catalog, rates: &OwnedRates) -> Vec<Kind> {
    let mut kinds = Vec::new();
    for (provider, region, offering, spot, weight) in KINDS {
        let (milli_cpu, memory, price, sunk) = match provider {
            "openstack" => (8000, 32 * GIB, 8 * rates.per_vcpu_hour + 32 * rates.per_gib_hour, true),
            "baremetal" => (32_000, 128 * GIB, 32 * rates.per_vcpu_hour + 128 * rates.per_gib_hour, true),
            _ => {
                let found = catalog
                    .offerings
                    .iter()
                    .find(|o| o.provider == provider && o.region == region && o.instance_type == offering);
                let Some(o) = found else { continue };
                let Some(price) = (if spot { o.price_spot } else { Some(o.price_on_demand) }) else { continue };
                (o.capacity.milli_cpu as i64, o.capacity.memory_bytes as i64, price, false)
            }
        };
        kinds.push(Kind {
            provider,
            region,
            offering,
            spot,
            sunk,
            weight,
            milli_cpu,
            memory,
            price: i64::try_from(price).unwrap_or(i64::MAX),
        });
    }
    kinds
}

/// The kind whose share of the total weight `point` falls in.
fn pick_kind(kinds: &[Kind], mut point: u64) -> usize {
    for (index, kind) in kinds.iter().enumerate() {
        if point < kind.weight {
            return index;
        }
        point -= kind.weight;
    }
    0
}

/// One generated task: where it ran, its request, its time, and its app's use (percent of the
/// request).
struct TaskRun {
    id: Uuid,
    app: Uuid,
    machine: Uuid,
    milli_cpu: i64,
    memory: i64,
    from_ms: i64,
    to_ms: i64,
    cpu_use: i64,
    memory_use: i64,
}

#[derive(Default)]
struct Rows {
    /// id, kind, start, end.
    machines: Vec<(Uuid, usize, i64, i64)>,
    tasks: Vec<TaskRun>,
}

impl Store {
    /// Writes `config.days` of history ending at `config.end` for `config.machines` machines,
    /// then meters it (and anything else up to now). Teams are created when missing; apps,
    /// machines and tasks are new rows.
    #[tracing::instrument(skip_all, fields(machines = config.machines, days = config.days))]
    pub async fn seed_history(
        &self,
        config: &HistoryConfig,
        catalog: &Catalog,
        rates: &OwnedRates,
    ) -> Result<HistorySummary> {
        let kinds = kinds(catalog, rates);
        let total_weight: u64 = kinds.iter().map(|k| k.weight).sum();
        if kinds.is_empty() || config.machines == 0 || config.days == 0 {
            return Err(StoreError::Invalid("machines, days: the history would be empty".into()));
        }
        let end = config.end.timestamp_millis();
        let start = end - i64::from(config.days) * DAY_MS;
        let mut rng = Rng(config.seed);
        let mut tx = self.begin().await?;

        // Teams (kept if they exist) and apps (new, deleted at the end).
        let mut apps: Vec<(Uuid, bool, i64, i64)> = Vec::new();
        for (team, names) in TEAMS {
            let team_id: Uuid = sqlx::query_scalar(
                "WITH new AS (INSERT INTO teams (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id)
                 SELECT id FROM new UNION ALL SELECT id FROM teams WHERE name = $2",
            )
            .bind(Uuid::new_v4())
            .bind(team)
            .fetch_one(&mut *tx)
            .await?;
            for name in names.iter() {
                let id = Uuid::new_v4();
                let batch = ["-nightly", "-etl", "train-", "backfill"].iter().any(|m| name.contains(m));
                sqlx::query(
                    "INSERT INTO apps (id, team_id, name, version, instances, created_at, deleted_at)
                     VALUES ($1, $2, $3, 1, 0, to_timestamp($4 / 1000.0), to_timestamp($5 / 1000.0))",
                )
                .bind(id)
                .bind(team_id)
                .bind(*name)
                .bind(start)
                .bind(end)
                .execute(&mut *tx)
                .await?;
                // Cpu and memory use as a percentage of the request: some apps are oversized.
                apps.push((id, batch, rng.range(10, 95), rng.range(30, 90)));
            }
        }

        let mut rows = Rows::default();
        for _ in 0..config.machines {
            let mut at = start - rng.range(0, 30 * DAY_MS);
            while at < end {
                let life = rng.range(3 * DAY_MS, 60 * DAY_MS);
                let (from, to) = (at.max(start), (at + life).min(end));
                at += life + rng.range(0, 6 * HOUR_MS);
                if from >= to {
                    continue;
                }
                let kind = pick_kind(&kinds, rng.next() % total_weight);
                let machine = Uuid::new_v4();
                rows.machines.push((machine, kind, from, to));
                let (mut cpu_left, mut memory_left) = (kinds[kind].milli_cpu, kinds[kind].memory);
                for _ in 0..rng.range(2, 6) {
                    let (app, batch, cpu_use, memory_use) = apps[rng.range(0, apps.len() as i64) as usize];
                    let cpu = (rng.range(1, 9) * 500).min(cpu_left);
                    let memory = (rng.range(1, 9) * GIB).min(memory_left);
                    if cpu < 250 || memory < GIB / 4 {
                        break;
                    }
                    (cpu_left, memory_left) = (cpu_left - cpu, memory_left - memory);
                    let mut task_at = from;
                    while task_at < to {
                        let (run, gap) = if batch {
                            (rng.range(HOUR_MS, 12 * HOUR_MS), rng.range(HOUR_MS, 24 * HOUR_MS))
                        } else {
                            (to - task_at, 0)
                        };
                        let task_end = (task_at + run).min(to);
                        rows.tasks.push(TaskRun {
                            id: Uuid::new_v4(),
                            app,
                            machine,
                            milli_cpu: cpu,
                            memory,
                            from_ms: task_at,
                            to_ms: task_end,
                            cpu_use,
                            memory_use,
                        });
                        task_at = task_end + gap;
                    }
                }
            }
        }

        for chunk in rows.machines.chunks(5000) {
            sqlx::query(
                "INSERT INTO machines (id, name, provider, address, agent_endpoint, control_key, capacity_milli_cpu,
                        capacity_memory, cgroup_version, state, region, offering, spot, sunk, price_micros,
                        created_at, terminated_at, last_heartbeat)
                 SELECT id, 'history-' || left(id::text, 8), provider, '', '', '', cpu, memory, 2, 'terminated', region,
                        offering, spot, sunk, price, to_timestamp(from_ms / 1000.0), to_timestamp(to_ms / 1000.0),
                        to_timestamp(to_ms / 1000.0)
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[], $7::bigint[],
                             $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
                      AS m(id, provider, region, offering, spot, sunk, cpu, memory, price, from_ms, to_ms)",
            )
            .bind(chunk.iter().map(|m| m.0).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| kinds[m.1].provider).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| kinds[m.1].region).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| kinds[m.1].offering).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| kinds[m.1].spot).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| kinds[m.1].sunk).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| kinds[m.1].milli_cpu).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| kinds[m.1].memory).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| kinds[m.1].price).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| m.2).collect::<Vec<_>>())
            .bind(chunk.iter().map(|m| m.3).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let mut usage_rows = 0;
        for chunk in rows.tasks.chunks(5000) {
            let column = |f: fn(&TaskRun) -> i64| chunk.iter().map(f).collect::<Vec<i64>>();
            sqlx::query(
                "INSERT INTO tasks (id, app_id, version, instance, state, desired, machine_id, milli_cpu, memory,
                        created_at, assigned_at, started_at, finished_at, message)
                 SELECT id, app, 1, 0, 'exited', 'stop', machine, cpu, memory, to_timestamp(from_ms / 1000.0),
                        to_timestamp(from_ms / 1000.0), to_timestamp(from_ms / 1000.0), to_timestamp(to_ms / 1000.0),
                        'history'
                 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
                      AS t(id, app, machine, cpu, memory, from_ms, to_ms)",
            )
            .bind(chunk.iter().map(|t| t.id).collect::<Vec<_>>())
            .bind(chunk.iter().map(|t| t.app).collect::<Vec<_>>())
            .bind(chunk.iter().map(|t| t.machine).collect::<Vec<_>>())
            .bind(column(|t| t.milli_cpu))
            .bind(column(|t| t.memory))
            .bind(column(|t| t.from_ms))
            .bind(column(|t| t.to_ms))
            .execute(&mut *tx)
            .await?;
            // One usage row per task and UTC day it ran, at its first hour that day: cpu and
            // memory at the app's share of the request, with a little noise per day.
            usage_rows += sqlx::query(
                "INSERT INTO task_usage_hours (task_id, hour, cpu_usec, memory_byte_seconds, memory_sampled_ms,
                        memory_peak)
                 SELECT t.id, date_trunc('hour', to_timestamp(s / 1000.0), 'UTC'),
                        t.cpu * (e - s) * t.cpu_use * (90 + abs(hashtext(t.id::text || s::text)) % 21) / 10000,
                        (t.memory * ((e - s) / 1000) * t.memory_use / 100)::bigint, e - s,
                        (t.memory * least(100, t.memory_use + 10) / 100)::bigint
                 FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                             $7::bigint[]) AS t(id, cpu, memory, from_ms, to_ms, cpu_use, memory_use),
                      LATERAL (SELECT greatest(t.from_ms, d) AS s, least(t.to_ms, d + 86400000) AS e
                               FROM generate_series(t.from_ms - t.from_ms % 86400000, t.to_ms - 1, 86400000) AS d) day",
            )
            .bind(chunk.iter().map(|t| t.id).collect::<Vec<_>>())
            .bind(column(|t| t.milli_cpu))
            .bind(column(|t| t.memory))
            .bind(column(|t| t.from_ms))
            .bind(column(|t| t.to_ms))
            .bind(column(|t| t.cpu_use))
            .bind(column(|t| t.memory_use))
            .execute(&mut *tx)
            .await?
            .rows_affected() as usize;
        }
        // The seeded days must be metered again, even where the ledger was already final.
        let first_day = chrono::DateTime::from_timestamp_millis(start).map(|at| at.date_naive());
        sqlx::query("UPDATE settings SET metered_through = LEAST(metered_through, $1)")
            .bind(first_day)
            .execute(&mut *tx)
            .await?;
        let summary =
            HistorySummary { machines: rows.machines.len(), tasks: rows.tasks.len(), usage_rows, metered_days: 0 };
        record(
            &mut tx,
            "system",
            "history.seeded",
            "metering",
            None,
            serde_json::to_value(&summary).unwrap_or_default(),
        )
        .await?;
        tx.commit().await?;
        let metered_days = self.meter(Utc::now().max(config.end)).await?.unwrap_or(0);
        Ok(HistorySummary { metered_days, ..summary })
    }
}
