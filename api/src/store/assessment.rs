//! What a policy assessment needs from the database: the pool as the scheduler sees it, and the
//! team's spend (month to date and run rate per provider from the metering ledger, requested
//! capacity per provider). Deciding is `canopy_core::policy::assess`'s job.

use super::{Result, Store, StoreError};
use canopy_core::Resources;
use canopy_core::policy::{Binding, PolicyDocument, hourly_share};
use canopy_core::schedule::{MachineView, MicrosPerHour};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A team's spend, per provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    /// Micro-units spent since the start of the month (UTC), all providers together.
    pub month_to_date: u64,
    /// What the team's running tasks cost per hour now.
    pub run_rate: BTreeMap<String, MicrosPerHour>,
    /// The team's requested milli-CPUs.
    pub capacity: BTreeMap<String, u64>,
}

/// What an assessment of one workload reads besides the policies.
#[derive(Clone, Debug)]
pub struct PolicyInputs {
    pub team: String,
    /// Machines that take work, with what is allocated on them (the assessed app's own tasks
    /// left out: its new version replaces them).
    pub machines: Vec<MachineView>,
    /// The team's spend without the assessed app's running tasks (with its past cost).
    pub spend: Spend,
    pub now: DateTime<Utc>,
}

/// The app's tasks' resources on each machine, to take back out of the snapshot.
#[derive(sqlx::FromRow)]
struct OwnTask {
    machine_id: Uuid,
    milli_cpu: i64,
    memory: i64,
}

/// One of the team's running tasks with its machine's provider, price and size.
#[derive(sqlx::FromRow)]
struct RunningTask {
    app: String,
    /// Started: the ledger's run rate counts it.
    started: bool,
    milli_cpu: i64,
    memory: i64,
    provider: String,
    price_micros: i64,
    capacity_milli_cpu: i64,
    capacity_memory: i64,
}
impl Store {
    /// Every policy's current document.
    pub async fn current_policies(&self) -> Result<Vec<PolicyDocument>> {
        let mut tx = self.begin().await?;
        let policies = super::policies::current_documents(&mut tx).await?;
        tx.commit().await?;
        Ok(policies)
    }

    /// Reads what assessing team `team`'s app `app` (which may not exist yet) needs; the
    /// team's spend only `with_spend` (only concentration and budget rules need it).
    pub async fn policy_inputs(&self, team: Uuid, app: &str, with_spend: bool) -> Result<PolicyInputs> {
        let mut tx = self.begin().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
        let team_name: String = sqlx::query_scalar("SELECT name FROM teams WHERE id = $1")
            .bind(team)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("team {team} does not exist")))?;
        let mut machines = Self::ready_machines(&mut tx).await?;
        let own: Vec<OwnTask> = sqlx::query_as(
            "SELECT t.machine_id, t.milli_cpu, t.memory FROM tasks t JOIN apps a ON a.id = t.app_id
             WHERE a.team_id = $1 AND a.name = $2 AND a.deleted_at IS NULL
               AND t.state IN ('assigned', 'running') AND t.machine_id IS NOT NULL",
        )
        .bind(team)
        .bind(app)
        .fetch_all(&mut *tx)
        .await?;
        for task in own {
            if let Some(machine) = machines.iter_mut().find(|m| m.id == task.machine_id) {
                let resources = Resources::new(task.milli_cpu.max(0) as u64, task.memory.max(0) as u64);
                machine.allocated = machine.allocated.saturating_sub(&resources);
            }
        }
        let running: Vec<RunningTask> = if with_spend {
            sqlx::query_as(
                "SELECT a.name AS app, t.started_at IS NOT NULL AS started, t.milli_cpu, t.memory, m.provider, m.price_micros, m.capacity_milli_cpu,
                        m.capacity_memory
                 FROM tasks t JOIN apps a ON a.id = t.app_id JOIN machines m ON m.id = t.machine_id
                 WHERE a.team_id = $1 AND t.state IN ('assigned', 'running')",
            )
            .bind(team)
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        let spend = if with_spend { self.spend_without(team, app, &running, now).await? } else { Spend::default() };
        Ok(PolicyInputs { team: team_name, machines, spend, now })
    }

    /// The team's spend from the metering ledger, less what `app`'s running tasks cost per hour
    /// (its new version replaces them), with the requested cpu of the others per provider.
    async fn spend_without(&self, team: Uuid, app: &str, running: &[RunningTask], now: DateTime<Utc>) -> Result<Spend> {
        let mut spend = Spend::default();
        for provider in self.team_spend(team, now).await? {
            spend.month_to_date = spend.month_to_date.saturating_add(provider.month_to_date_micros);
            spend.run_rate.insert(provider.provider, provider.hourly_run_rate_micros);
        }
        for task in running {
            let request = Resources::new(task.milli_cpu.max(0) as u64, task.memory.max(0) as u64);
            if task.app == app && task.started {
                let capacity =
                    Resources::new(task.capacity_milli_cpu.max(0) as u64, task.capacity_memory.max(0) as u64);
                let cost = hourly_share(task.price_micros.max(0) as u64, capacity, request);
                if let Some(rate) = spend.run_rate.get_mut(&task.provider) {
                    *rate = rate.saturating_sub(cost);
                }
            } else if task.app != app {
                *spend.capacity.entry(task.provider.clone()).or_default() += request.milli_cpu;
            }
        }
        Ok(spend)
    }
}

/// Whole hours left in `now`'s month (UTC), the current one counted.
pub fn hours_left_in_month(now: DateTime<Utc>) -> u64 {
    let (year, month) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    let next = Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single().unwrap_or(now);
    let seconds = (next - now).num_seconds().max(0) as u64;
    seconds.div_ceil(3600)
}

/// One live app with its current spec, for the assessments that go over every workload.
#[derive(Clone, Debug)]
pub struct LiveSpec {
    pub app_id: Uuid,
    pub team_id: Uuid,
    pub team: String,
    pub spec: canopy_core::spec::AppSpec,
    pub binding: Option<Binding>,
    /// Why it lost its portability ('' while it has it).
    pub portability: String,
}

/// Where one of an app's wanted tasks is, with its machine's price, for explanations.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaskPlace {
    pub instance: i32,
    pub version: i32,
    pub state: String,
    pub message: String,
    pub milli_cpu: i64,
    pub memory: i64,
    pub machine: Option<String>,
    pub provider: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub offering: Option<String>,
    pub spot: Option<bool>,
    pub price_micros: Option<i64>,
    pub capacity_milli_cpu: Option<i64>,
    pub capacity_memory: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct LiveRow {
    app_id: Uuid,
    team_id: Uuid,
    team: String,
    spec: serde_json::Value,
    binding: Option<serde_json::Value>,
    portability: String,
}

impl Store {
    /// Every live app `scope` may see (deleted apps and ended jobs left out), by team and name.
    pub async fn live_specs(&self, scope: crate::auth::Scope) -> Result<Vec<LiveSpec>> {
        let rows: Vec<LiveRow> = sqlx::query_as(
            "SELECT a.id AS app_id, a.team_id, t.name AS team, v.spec, a.policy_binding AS binding, a.portability
             FROM apps a JOIN teams t ON t.id = a.team_id JOIN app_versions v ON v.app_id = a.id AND v.version = a.version
             WHERE a.deleted_at IS NULL AND a.job_state NOT IN ('succeeded', 'failed')
               AND ($1::uuid IS NULL OR a.team_id = $1)
             ORDER BY t.name, a.name",
        )
        .bind(scope.team_filter())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("app {}: {e}", row.app_id));
                Ok(LiveSpec {
                    app_id: row.app_id,
                    team_id: row.team_id,
                    team: row.team,
                    spec: serde_json::from_value(row.spec).map_err(corrupt)?,
                    binding: row.binding.map(serde_json::from_value).transpose().map_err(corrupt)?,
                    portability: row.portability,
                })
            })
            .collect()
    }

    /// The app's wanted tasks (pending, assigned or running) and their machines.
    pub async fn task_places(&self, app_id: Uuid) -> Result<Vec<TaskPlace>> {
        Ok(sqlx::query_as(
            "SELECT t.instance, t.version, t.state, t.message, t.milli_cpu, t.memory, m.name AS machine, m.provider,
                    m.region, m.zone, m.offering, m.spot, m.price_micros, m.capacity_milli_cpu, m.capacity_memory
             FROM tasks t LEFT JOIN machines m ON m.id = t.machine_id
             WHERE t.app_id = $1 AND t.desired = 'run' AND t.state IN ('pending', 'assigned', 'running')
             ORDER BY t.instance, t.created_at",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records what the policies now bind an app to and whether it is portable; an audit event
    /// when its portability flips. Returns whether it flipped.
    pub async fn set_policy_outcome(&self, app: &LiveSpec, binding: &Binding, portability: &str) -> Result<bool> {
        let json = serde_json::to_value(binding).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.begin().await?;
        let before: Option<String> = sqlx::query_scalar(
            "UPDATE apps a SET policy_binding = $2, portability = $3 FROM (SELECT id, portability FROM apps WHERE id = $1 FOR UPDATE) old
             WHERE a.id = old.id RETURNING old.portability",
        )
        .bind(app.app_id)
        .bind(&json)
        .bind(portability)
        .fetch_optional(&mut *tx)
        .await?;
        let flipped = before.is_some_and(|before| before.is_empty() != portability.is_empty());
        if flipped {
            let (kind, detail) = if portability.is_empty() {
                ("app.portability_restored", serde_json::json!({}))
            } else {
                ("app.portability_lost", serde_json::json!({"reason": portability}))
            };
            super::record(&mut tx, "system", kind, &app.spec.name, Some(app.team_id), detail).await?;
        }
        tx.commit().await?;
        Ok(flipped)
    }
}
