//! Provider evacuations: the preview (canopy-core's plan on a snapshot of the pool), the
//! durable record of one under way, its waves, and how it ends (completed, aborted, lifted).
//!
//! While an evacuation is `running` or `completed`, its provider takes no new work: its
//! machines are left out of placement snapshots and its offerings out of the catalog (the
//! provisioning controller asks [`Store::evacuated_providers`]). The moves themselves are the
//! ones consolidation uses: a task on a draining machine gets a successor placed by the
//! scheduler and stops once that one is healthy; the empty machine is then terminated.

use super::{CONTROLLER_LOCK, Result, Store, StoreError, record};
use canopy_core::Resources;
use canopy_core::policy::Binding;
use canopy_core::schedule::{
    Catalog, Constraints, EvacuationPlan, Policy, Quota, RunningTask, Snapshot, SpotPolicy, TaskAsk, Timing,
    WaitingMachine, WorkloadKind, disruption_budget, next_wave, plan_evacuation,
};
use canopy_core::spec::AppSpec;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Seed of the preview's placement tie-breaks: the same pool gives the same plan.
const EVACUATION_SEED: u64 = 0xe7ac;

/// Boot time assumed for a provider never seen booting a machine.
const TYPICAL_BOOT_SECONDS: u64 = 90;

/// A successor starting on a machine that is up and passing its first health checks; the
/// old task's stop grace is added.
const WAVE_START_SECONDS: u64 = 10;

/// The preview of an evacuation, as shown to people: names instead of ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuationPlanView {
    pub provider: String,
    pub moves: Vec<PlannedMove>,
    /// Bought first, before anything moves.
    pub purchases: Vec<PlannedPurchase>,
    /// The provider's machines, terminated once empty.
    pub releases: Vec<PlannedRelease>,
    /// Tasks with nowhere to go (an evacuation is refused while there are any).
    pub unplaced: Vec<UnplacedTask>,
    pub waves: usize,
    pub cost_before_micros: u64,
    pub cost_after_micros: u64,
    pub boot_seconds: u64,
    pub estimated_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMove {
    pub app: String,
    pub instance: i32,
    /// `service` or `batch` (a job's run: drained, or re-queued after the batch grace).
    pub kind: String,
    pub from: String,
    /// An existing machine's name, or `new #N` (the N-th purchase).
    pub to: String,
    pub to_provider: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPurchase {
    /// `new #N` in the moves.
    pub number: usize,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    pub spot: bool,
    pub price_micros: u64,
    pub tasks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRelease {
    pub machine: String,
    pub offering: String,
    pub region: String,
    pub price_micros: u64,
    pub tasks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnplacedTask {
    pub app: String,
    pub instance: i32,
    pub machine: String,
    pub reason: String,
}

/// An evacuation and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvacuationView {
    pub id: Uuid,
    pub provider: String,
    /// `running`, `completed` (the provider stays out of use), `aborted` or `lifted`.
    pub state: String,
    pub batch_grace_ms: i64,
    pub created_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Waves of machines started so far.
    pub waves_started: i32,
    /// The plan shown when it started.
    pub plan: EvacuationPlanView,
    /// The provider's machines not terminated yet, and how many of them are draining.
    pub machines_left: i64,
    pub machines_draining: i64,
    /// Tasks still on the provider's machines.
    pub remaining: Vec<RemainingTask>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct RemainingTask {
    pub app: String,
    pub instance: i32,
    pub machine: String,
    pub state: String,
    /// `stop`: it is being stopped (its successor is healthy, or it was re-queued).
    pub desired: String,
    /// The newest other task of the same instance, and its message (why it waits).
    pub successor_state: Option<String>,
    pub successor_message: Option<String>,
}

/// One provider as the pool sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderRow {
    pub name: String,
    /// Offerings it sells now (none while it is evacuating or evacuated).
    pub offerings: usize,
    /// `active`, `evacuating` or `evacuated` (takes no work until lifted).
    pub state: String,
    pub machines: i64,
    pub tasks: i64,
    pub cost_per_hour_micros: i64,
    /// Its newest evacuation, in any state.
    pub evacuation: Option<EvacuationView>,
}

#[derive(sqlx::FromRow)]
struct EvacuationRow {
    id: Uuid,
    provider: String,
    state: String,
    batch_grace_ms: i64,
    created_by: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    waves_started: i32,
    plan: serde_json::Value,
}

/// A task on the evacuated provider, with what the preview and the budgets need.
#[derive(sqlx::FromRow)]
struct LeavingTask {
    id: Uuid,
    app_id: Uuid,
    app: String,
    instance: i32,
    instances: i32,
    machine_id: Uuid,
    milli_cpu: i64,
    memory: i64,
    spec: serde_json::Value,
    /// What its policies bind the app to (NULL without policies).
    binding: Option<serde_json::Value>,
}

impl Store {
    /// Providers under an evacuation that is running or completed: they take no new work.
    pub async fn evacuated_providers(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT provider FROM evacuations WHERE state IN ('running', 'completed')")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Whether `provider` has machines Canopy knows of (live or not).
    pub async fn provider_has_machines(&self, provider: &str) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM machines WHERE provider = $1)")
            .bind(provider)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The preview: what evacuating `provider` now would move where, buy and give back, at
    /// which hourly cost and in about how long. Changes nothing.
    pub async fn evacuation_plan(
        &self,
        provider: &str,
        catalog: &Arc<Catalog>,
        quotas: &BTreeMap<String, Quota>,
    ) -> Result<EvacuationPlanView> {
        let mut tx = self.begin().await?;
        let planned = match live_state(&mut tx, provider).await {
            Ok(()) => plan_in(&mut tx, provider, catalog, quotas).await.map(|(_, view)| view),
            Err(error) => Err(error),
        };
        settle(tx, planned).await
    }

    /// Starts evacuating `provider`: records it (durably, with the plan), buys the plan's
    /// machines at once (new capacity first) and leaves the waves to the controller. Refused
    /// while the provider is already evacuating or evacuated, and while any of its tasks has
    /// nowhere to go (the message names them).
    pub async fn start_evacuation(
        &self,
        actor: &str,
        provider: &str,
        batch_grace: Duration,
        catalog: &Arc<Catalog>,
        quotas: &BTreeMap<String, Quota>,
    ) -> Result<EvacuationView> {
        let mut tx = self.begin_locked().await?;
        let started = start_in(&mut tx, actor, provider, batch_grace, catalog, quotas).await;
        settle(tx, started).await?;
        self.evacuation(provider).await
    }

    /// A transaction holding the controllers' lock: it waits for a controller step's
    /// transaction to end and keeps the next one out until it ends.
    async fn begin_locked(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CONTROLLER_LOCK).execute(&mut *tx).await?;
        Ok(tx)
    }

    /// The newest evacuation of `provider`, with its progress.
    pub async fn evacuation(&self, provider: &str) -> Result<EvacuationView> {
        let row: Option<EvacuationRow> = sqlx::query_as(
            "SELECT id, provider, state, batch_grace_ms, created_by, started_at, finished_at, waves_started, plan
             FROM evacuations WHERE provider = $1 ORDER BY started_at DESC LIMIT 1",
        )
        .bind(provider)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or_else(|| StoreError::NotFound(format!("provider {provider} was never evacuated")))?;
        self.view(row).await
    }

    async fn view(&self, row: EvacuationRow) -> Result<EvacuationView> {
        let (machines_left, machines_draining): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE state IN ('requested', 'booting', 'ready', 'draining', 'terminating')
                                      OR (provisioned AND state IN ('failed', 'lost'))),
                    COUNT(*) FILTER (WHERE state = 'draining')
             FROM machines WHERE provider = $1",
        )
        .bind(&row.provider)
        .fetch_one(&self.pool)
        .await?;
        let remaining: Vec<RemainingTask> = sqlx::query_as(
            "SELECT a.name AS app, t.instance, m.name AS machine, t.state, t.desired,
                    s.state AS successor_state, s.message AS successor_message
             FROM tasks t JOIN machines m ON m.id = t.machine_id JOIN apps a ON a.id = t.app_id
             LEFT JOIN LATERAL (
                 SELECT s.state, s.message FROM tasks s
                 WHERE s.app_id = t.app_id AND s.instance = t.instance AND s.id <> t.id AND s.desired = 'run'
                   AND s.state IN ('pending', 'assigned', 'running')
                 ORDER BY s.created_at DESC LIMIT 1) s ON true
             WHERE m.provider = $1 AND t.state IN ('assigned', 'running')
             ORDER BY a.name, t.instance",
        )
        .bind(&row.provider)
        .fetch_all(&self.pool)
        .await?;
        let plan = serde_json::from_value(row.plan)
            .map_err(|e| StoreError::Corrupt(format!("evacuation {}: plan: {e}", row.id)))?;
        Ok(EvacuationView {
            id: row.id,
            provider: row.provider,
            state: row.state,
            batch_grace_ms: row.batch_grace_ms,
            created_by: row.created_by,
            started_at: row.started_at,
            finished_at: row.finished_at,
            waves_started: row.waves_started,
            plan,
            machines_left,
            machines_draining,
            remaining,
        })
    }

    /// Ends `provider`'s evacuation. A running one is aborted: what already moved stays (an
    /// instance whose successor is healthy stops on the provider), a move not finished is
    /// undone (the successor stops, the original keeps running), and the provider's draining
    /// machines take work again. A completed one is lifted: the provider takes work again.
    pub async fn end_evacuation(&self, actor: &str, provider: &str) -> Result<EvacuationView> {
        let mut tx = self.begin_locked().await?;
        let ended = end_in(&mut tx, actor, provider).await;
        settle(tx, ended).await?;
        self.evacuation(provider).await
    }

    /// Every provider: the ones selling `offerings` (per provider), and any with machines or
    /// evacuations.
    pub async fn providers(&self, offerings: &BTreeMap<String, usize>) -> Result<Vec<ProviderRow>> {
        let counts: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT m.provider,
                    COUNT(DISTINCT m.id) FILTER (WHERE m.state IN ('requested', 'booting', 'ready', 'draining')),
                    COUNT(t.id)
             FROM machines m LEFT JOIN tasks t ON t.machine_id = m.id AND t.state IN ('assigned', 'running')
             GROUP BY m.provider",
        )
        .fetch_all(&self.pool)
        .await?;
        let costs: HashMap<String, i64> = sqlx::query_as(
            "SELECT provider, COALESCE(SUM(price_micros), 0)::bigint FROM machines
             WHERE state IN ('requested', 'booting', 'ready', 'draining') GROUP BY provider",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let evacuated: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT provider FROM evacuations").fetch_all(&self.pool).await?;
        let mut names: Vec<String> = offerings.keys().cloned().collect();
        names.extend(counts.iter().map(|c| c.0.clone()));
        names.extend(evacuated);
        names.sort();
        names.dedup();
        let mut rows = Vec::new();
        for name in names {
            let (machines, tasks) =
                counts.iter().find(|c| c.0 == name).map_or((0, 0), |&(_, machines, tasks)| (machines, tasks));
            let evacuation = match self.evacuation(&name).await {
                Ok(view) => Some(view),
                Err(StoreError::NotFound(_)) => None,
                Err(error) => return Err(error),
            };
            let state = match evacuation.as_ref().map(|e| e.state.as_str()) {
                Some("running") => "evacuating",
                Some("completed") => "evacuated",
                _ => "active",
            };
            rows.push(ProviderRow {
                offerings: offerings.get(&name).copied().unwrap_or(0),
                state: state.to_string(),
                machines,
                tasks,
                cost_per_hour_micros: costs.get(&name).copied().unwrap_or(0),
                evacuation,
                name,
            });
        }
        Ok(rows)
    }

    /// Controller step for running evacuations: re-queues batch tasks past their grace,
    /// starts the next wave of machines as each app's disruption budget allows, and marks an
    /// evacuation completed once its provider has no machine and no task left. Returns how
    /// many machines started draining.
    pub async fn step_evacuations(&self) -> Result<usize> {
        let Some(mut tx) = self.begin_leader().await? else { return Ok(0) };
        let running: Vec<(Uuid, String, i64)> =
            sqlx::query_as("SELECT id, provider, batch_grace_ms FROM evacuations WHERE state = 'running'")
                .fetch_all(&mut *tx)
                .await?;
        let mut drained = 0;
        for (id, provider, grace_ms) in running {
            requeue_batch(&mut tx, &provider, grace_ms).await?;
            drained += start_wave(&mut tx, id, &provider).await?;
            complete_if_done(&mut tx, id, &provider).await?;
        }
        tx.commit().await?;
        Ok(drained)
    }
}

/// Records the evacuation of `provider` with its plan and buys the plan's machines, in the
/// caller's locked transaction.
async fn start_in(
    tx: &mut Transaction<'static, Postgres>,
    actor: &str,
    provider: &str,
    batch_grace: Duration,
    catalog: &Arc<Catalog>,
    quotas: &BTreeMap<String, Quota>,
) -> Result<()> {
    live_state(tx, provider).await?;
    let (plan, view) = plan_in(tx, provider, catalog, quotas).await?;
    if !view.unplaced.is_empty() {
        let stuck: Vec<String> =
            view.unplaced.iter().map(|u| format!("{} instance {}: {}", u.app, u.instance, u.reason)).collect();
        return Err(StoreError::Conflict(format!(
            "cannot evacuate {provider}: {} task(s) have nowhere else to go ({})",
            stuck.len(),
            stuck.join("; ")
        )));
    }
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO evacuations (id, provider, state, batch_grace_ms, plan, created_by)
         VALUES ($1, $2, 'running', $3, $4, $5)",
    )
    .bind(id)
    .bind(provider)
    .bind(i64::try_from(batch_grace.as_millis()).map_err(|_| StoreError::Invalid("batch_grace: too large".into()))?)
    .bind(serde_json::to_value(&view).map_err(|e| StoreError::Invalid(e.to_string()))?)
    .bind(actor)
    .execute(&mut **tx)
    .await?;
    Store::record_provisions(tx, &plan.purchases).await?;
    let detail = serde_json::json!({
        "moves": view.moves.len(), "purchases": view.purchases.len(), "releases": view.releases.len(),
        "waves": view.waves, "cost_before_per_hour": view.cost_before_micros as f64 / 1e6,
        "cost_after_per_hour": view.cost_after_micros as f64 / 1e6, "estimated_seconds": view.estimated_seconds,
        "batch_grace_ms": batch_grace.as_millis() as u64,
    });
    record(tx, actor, "evacuation.started", provider, None, detail).await?;
    tracing::info!(provider, moves = view.moves.len(), purchases = view.purchases.len(), "evacuation started");
    Ok(())
}

/// Refuses when `provider` is already being evacuated, or is evacuated.
async fn live_state(tx: &mut Transaction<'static, Postgres>, provider: &str) -> Result<()> {
    let live: Option<String> =
        sqlx::query_scalar("SELECT state FROM evacuations WHERE provider = $1 AND state IN ('running', 'completed')")
            .bind(provider)
            .fetch_optional(&mut **tx)
            .await?;
    match live.as_deref() {
        Some("running") => Err(StoreError::Conflict(format!(
            "provider {provider} is already being evacuated (`canopy provider status {provider}`)"
        ))),
        Some(_) => Err(StoreError::Conflict(format!(
            "provider {provider} is evacuated already; `canopy provider evacuate {provider} --abort` lifts it"
        ))),
        None => Ok(()),
    }
}

/// Aborts or lifts `provider`'s evacuation in the caller's locked transaction.
async fn end_in(tx: &mut Transaction<'static, Postgres>, actor: &str, provider: &str) -> Result<()> {
    let live: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT id, state FROM evacuations WHERE provider = $1 AND state IN ('running', 'completed') FOR UPDATE",
    )
    .bind(provider)
    .fetch_optional(&mut **tx)
    .await?;
    let (id, state) =
        live.ok_or_else(|| StoreError::NotFound(format!("provider {provider} is not being evacuated")))?;
    let ending = if state == "running" { "aborted" } else { "lifted" };
    // Moves whose successor is healthy are done: the original stops.
    let kept = sqlx::query(
        "UPDATE tasks o SET desired = 'stop', message = $2
         FROM machines m
         WHERE o.machine_id = m.id AND m.provider = $1 AND m.state = 'draining' AND m.state_reason = 'evacuation'
           AND o.desired = 'run' AND o.state IN ('assigned', 'running')
           AND EXISTS (
               SELECT 1 FROM tasks s JOIN app_versions v ON v.app_id = s.app_id AND v.version = s.version
               WHERE s.app_id = o.app_id AND s.instance = o.instance AND s.id <> o.id AND s.desired = 'run'
                 AND s.state = 'running' AND (s.healthy OR (s.healthy IS NULL AND NOT v.spec ? 'health')))",
    )
    .bind(provider)
    .bind(format!("moved off {provider} before its evacuation was aborted"))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    // Moves not done are undone: the successor stops, the original stays.
    let undone = sqlx::query(
        "UPDATE tasks s SET desired = 'stop', message = $2
         WHERE s.desired = 'run' AND s.state IN ('pending', 'assigned', 'running')
           AND EXISTS (
               SELECT 1 FROM tasks o JOIN machines m ON m.id = o.machine_id
               WHERE m.provider = $1 AND m.state = 'draining' AND m.state_reason = 'evacuation'
                 AND o.desired = 'run' AND o.state IN ('assigned', 'running')
                 AND o.app_id = s.app_id AND o.instance = s.instance AND o.id <> s.id)",
    )
    .bind(provider)
    .bind(format!("its move was cancelled: the evacuation of {provider} was aborted"))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let returned: Vec<String> = sqlx::query_scalar(
        "UPDATE machines SET state = 'ready', state_reason = '', drain_started_at = NULL
         WHERE provider = $1 AND state = 'draining' AND state_reason = 'evacuation' RETURNING name",
    )
    .bind(provider)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query("UPDATE evacuations SET state = $2, finished_at = now() WHERE id = $1")
        .bind(id)
        .bind(ending)
        .execute(&mut **tx)
        .await?;
    let detail = serde_json::json!({
        "moves_kept": kept, "moves_undone": undone, "machines_returned": returned,
    });
    record(tx, actor, &format!("evacuation.{ending}"), provider, None, detail).await?;
    tracing::info!(provider, ending, moves_kept = kept, moves_undone = undone, "evacuation ended");
    Ok(())
}

/// Commits on success; rolls back at once on failure, so the controllers' lock is not held
/// until the connection happens to be reused.
async fn settle<T>(tx: Transaction<'static, Postgres>, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(error) => {
            tx.rollback().await?;
            Err(error)
        }
    }
}

/// A job's tasks on a machine drained for the evacuation run to completion, up to the batch
/// grace; then they are stopped and their index queued again elsewhere (not a failure).
async fn requeue_batch(tx: &mut Transaction<'static, Postgres>, provider: &str, grace_ms: i64) -> Result<()> {
    let requeued: Vec<String> = sqlx::query_scalar(
        "UPDATE tasks t SET desired = 'stop', message = $3
         FROM machines m, app_versions v, apps a
         WHERE t.machine_id = m.id AND m.provider = $1 AND m.state = 'draining' AND m.state_reason = 'evacuation'
           AND m.drain_started_at < now() - make_interval(secs => $2)
           AND v.app_id = t.app_id AND v.version = t.version AND v.spec ? 'job' AND a.id = t.app_id
           AND t.desired = 'run' AND t.state IN ('assigned', 'running')
         RETURNING a.name || ' instance ' || t.instance",
    )
    .bind(provider)
    .bind(grace_ms as f64 / 1000.0)
    .bind(format!("re-queued: provider {provider} is being evacuated"))
    .fetch_all(&mut **tx)
    .await?;
    if !requeued.is_empty() {
        tracing::info!(provider, requeued = requeued.len(), "batch tasks re-queued off the evacuated provider");
        record(tx, "system", "evacuation.requeued", provider, None, serde_json::json!({"tasks": requeued})).await?;
    }
    Ok(())
}

/// Drains the provider's next machines: as many as every app's disruption budget allows,
/// counting the tasks still moving off machines drained earlier.
async fn start_wave(tx: &mut Transaction<'static, Postgres>, id: Uuid, provider: &str) -> Result<usize> {
    // Each active task on the provider's ready or draining machines, with its app's budget.
    let rows: Vec<WaveRow> = sqlx::query_as(
        "SELECT m.id AS machine, m.state, t.app_id, a.instances, v.spec
         FROM machines m
         LEFT JOIN tasks t ON t.machine_id = m.id AND t.desired = 'run' AND t.state IN ('assigned', 'running')
         LEFT JOIN apps a ON a.id = t.app_id
         LEFT JOIN app_versions v ON v.app_id = a.id AND v.version = a.version
         WHERE m.provider = $1 AND (m.state = 'ready' OR (m.state = 'draining' AND t.id IS NOT NULL))
         ORDER BY m.id",
    )
    .bind(provider)
    .fetch_all(&mut **tx)
    .await?;
    let mut waiting: BTreeMap<Uuid, WaitingMachine> = BTreeMap::new();
    let mut moving: BTreeMap<String, u32> = BTreeMap::new();
    let mut budgets: BTreeMap<String, u32> = BTreeMap::new();
    for row in rows {
        if row.state == "ready" {
            waiting.entry(row.machine).or_insert_with(|| WaitingMachine { id: row.machine, ..Default::default() });
        }
        let (Some(app), Some(instances), Some(spec)) = (row.app_id, row.instances, row.spec) else { continue };
        let group = app.to_string();
        if !budgets.contains_key(&group) {
            let spec: AppSpec =
                serde_json::from_value(spec).map_err(|e| StoreError::Corrupt(format!("app {app}: {e}")))?;
            let budget = disruption_budget(
                instances.max(0) as u32,
                spec.update.max_surge,
                spec.update.max_unavailable,
                spec.job.is_some(),
            );
            budgets.insert(group.clone(), budget);
        }
        let counts = match waiting.get_mut(&row.machine) {
            Some(machine) => &mut machine.groups,
            None => &mut moving,
        };
        *counts.entry(group).or_default() += 1;
    }
    let waiting: Vec<WaitingMachine> = waiting.into_values().collect();
    let wave = next_wave(&waiting, &moving, &budgets);
    if wave.is_empty() {
        return Ok(0);
    }
    let names: Vec<String> = sqlx::query_scalar(
        "UPDATE machines SET state = 'draining', state_reason = 'evacuation', drain_started_at = now()
         WHERE id = ANY($1) AND state = 'ready' RETURNING name",
    )
    .bind(&wave)
    .fetch_all(&mut **tx)
    .await?;
    let wave_number: i32 = sqlx::query_scalar(
        "UPDATE evacuations SET waves_started = waves_started + 1 WHERE id = $1 RETURNING waves_started",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    for name in &names {
        let detail = serde_json::json!({"reason": "evacuation", "wave": wave_number});
        record(tx, "system", "machine.draining", name, None, detail).await?;
    }
    tracing::info!(provider, wave = wave_number, machines = names.len(), "evacuation wave started");
    Ok(names.len())
}

#[derive(sqlx::FromRow)]
struct WaveRow {
    machine: Uuid,
    state: String,
    app_id: Option<Uuid>,
    instances: Option<i32>,
    spec: Option<serde_json::Value>,
}

/// Done when the provider has no machine waiting, booting or running anything, and every
/// machine Canopy bought there is terminated (a machine joined by hand stays, drained).
async fn complete_if_done(tx: &mut Transaction<'static, Postgres>, id: Uuid, provider: &str) -> Result<()> {
    let done: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (
            SELECT 1 FROM machines m WHERE m.provider = $1 AND (
                m.state IN ('requested', 'booting', 'ready', 'terminating')
                OR (m.provisioned AND m.state IN ('draining', 'failed', 'lost'))
                OR EXISTS (SELECT 1 FROM tasks t WHERE t.machine_id = m.id AND t.state IN ('assigned', 'running'))))",
    )
    .bind(provider)
    .fetch_one(&mut **tx)
    .await?;
    if !done {
        return Ok(());
    }
    sqlx::query("UPDATE evacuations SET state = 'completed', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    record(tx, "system", "evacuation.completed", provider, None, serde_json::json!({})).await?;
    tracing::info!(provider, "evacuation completed");
    Ok(())
}

/// The snapshot, the plan, and the plan with names, for evacuating `provider` now.
async fn plan_in(
    tx: &mut Transaction<'static, Postgres>,
    provider: &str,
    catalog: &Arc<Catalog>,
    quotas: &BTreeMap<String, Quota>,
) -> Result<(EvacuationPlan, EvacuationPlanView)> {
    let machines = Store::ready_machines(tx).await?;
    let leaving: Vec<LeavingTask> = sqlx::query_as(
        "SELECT t.id, t.app_id, a.name AS app, t.instance, a.instances, t.machine_id, t.milli_cpu, t.memory, v.spec,
                a.policy_binding AS binding
         FROM tasks t JOIN machines m ON m.id = t.machine_id JOIN apps a ON a.id = t.app_id
         JOIN app_versions v ON v.app_id = t.app_id AND v.version = t.version
         WHERE m.provider = $1 AND m.state IN ('requested', 'booting', 'ready')
           AND t.desired = 'run' AND t.state IN ('assigned', 'running')
         ORDER BY t.id",
    )
    .bind(provider)
    .fetch_all(&mut **tx)
    .await?;
    let names: HashMap<Uuid, String> = sqlx::query_as::<_, (Uuid, String)>(
        "SELECT id, name FROM machines WHERE state IN ('requested', 'booting', 'ready')",
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let mut running = Vec::new();
    let mut bound_nowhere = Vec::new();
    let mut budgets = BTreeMap::new();
    let mut stop_grace_s = 0;
    let mut kinds: HashMap<Uuid, (&str, i32, WorkloadKind)> = HashMap::new();
    for task in &leaving {
        let spec: AppSpec = serde_json::from_value(task.spec.clone())
            .map_err(|e| StoreError::Corrupt(format!("app {}: {e}", task.app)))?;
        let kind = if spec.job.is_some() { WorkloadKind::Batch } else { WorkloadKind::Service };
        let budget = disruption_budget(
            task.instances.max(0) as u32,
            spec.update.max_surge,
            spec.update.max_unavailable,
            spec.job.is_some(),
        );
        budgets.insert(task.app_id.to_string(), budget);
        stop_grace_s = stop_grace_s.max(spec.stop_grace.0.div_ceil(1000));
        kinds.insert(task.id, (task.app.as_str(), task.instance, kind));
        let ask = TaskAsk {
            id: task.id,
            group: task.app_id.to_string(),
            resources: Resources::new(task.milli_cpu.max(0) as u64, task.memory.max(0) as u64),
            priority: spec.priority,
            interruptible: spec.interruptible,
            kind,
            // As placement does: agents and sample apps are built for amd64.
            constraints: Constraints { arch: Some("amd64".into()), ..spec.placement.constraints() },
            ..Default::default()
        };
        // As placement does: the app's policies narrow where it may go.
        let binding: Option<Binding> = task
            .binding
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("app {}: policy binding: {e}", task.app)))?;
        let ask = match binding.map(|b| b.apply(&ask, u32::try_from(task.instance).unwrap_or(0))) {
            None => ask,
            Some(Some(bound)) => bound,
            Some(None) => {
                bound_nowhere.push(task.id);
                ask
            }
        };
        running.push(RunningTask { task: ask, machine: task.machine_id, do_not_disrupt: false });
    }
    let timing = Timing {
        boot_seconds: observed_boots(tx).await?,
        typical_boot_seconds: TYPICAL_BOOT_SECONDS,
        wave_seconds: WAVE_START_SECONDS + stop_grace_s,
    };
    // Spot only ever serves interruptible work, as in placement.
    let policy =
        Policy { spot: SpotPolicy { service: true, batch: true }, quotas: quotas.clone(), ..Default::default() };
    let snapshot = Snapshot { machines, running, catalog: catalog.clone(), policy };
    let plan = plan_evacuation(&snapshot, provider, &budgets, &timing, EVACUATION_SEED);

    let purchase_number: HashMap<Uuid, usize> = plan.purchases.iter().enumerate().map(|(i, p)| (p.id, i + 1)).collect();
    let machine_name = |id: &Uuid| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    let provider_of: HashMap<Uuid, &str> = snapshot
        .machines
        .iter()
        .map(|m| (m.id, m.provider.as_str()))
        .chain(plan.purchases.iter().map(|p| (p.id, p.provider.as_str())))
        .collect();
    let moves = plan
        .relocations
        .iter()
        .filter(|r| !bound_nowhere.contains(&r.task))
        .map(|r| {
            let (app, instance, kind) = kinds.get(&r.task).copied().unwrap_or(("?", -1, WorkloadKind::Service));
            PlannedMove {
                app: app.to_string(),
                instance,
                kind: kind_name(kind).to_string(),
                from: machine_name(&r.from),
                to: match purchase_number.get(&r.to) {
                    Some(n) => format!("new #{n}"),
                    None => machine_name(&r.to),
                },
                to_provider: provider_of.get(&r.to).copied().unwrap_or_default().to_string(),
            }
        })
        .collect();
    let purchases = plan
        .purchases
        .iter()
        .enumerate()
        .map(|(i, p)| PlannedPurchase {
            number: i + 1,
            provider: p.provider.clone(),
            region: p.region.clone(),
            zone: p.zone.clone(),
            instance_type: p.instance_type.clone(),
            spot: p.spot,
            price_micros: p.price,
            tasks: p.tasks.len(),
        })
        .collect();
    let releases = plan
        .releases
        .iter()
        .filter_map(|id| snapshot.machines.iter().find(|m| m.id == *id))
        .map(|m| PlannedRelease {
            machine: machine_name(&m.id),
            offering: m.offering.clone(),
            region: m.region.clone(),
            price_micros: m.price,
            tasks: leaving.iter().filter(|t| t.machine_id == m.id).count(),
        })
        .collect();
    let policy_reason = "its policies leave it no place".to_string();
    let unplaced = plan
        .unplaced
        .iter()
        .map(|u| (u.task, u.reason.to_string()))
        .filter(|(task, _)| !bound_nowhere.contains(task))
        .chain(bound_nowhere.iter().map(|&task| (task, policy_reason.clone())))
        .map(|(task, reason)| {
            let (app, instance, _) = kinds.get(&task).copied().unwrap_or(("?", -1, WorkloadKind::Service));
            let machine = leaving.iter().find(|t| t.id == task).map(|t| machine_name(&t.machine_id));
            UnplacedTask { app: app.to_string(), instance, machine: machine.unwrap_or_default(), reason }
        })
        .collect();
    let view = EvacuationPlanView {
        provider: provider.to_string(),
        moves,
        purchases,
        releases,
        unplaced,
        waves: plan.waves.len(),
        cost_before_micros: plan.cost_before,
        cost_after_micros: plan.cost_after,
        boot_seconds: plan.boot_seconds,
        estimated_seconds: plan.estimated_seconds,
    };
    Ok((plan, view))
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Service => "service",
        WorkloadKind::Batch => "batch",
    }
}

/// Median seconds from a machine being requested to its agent joining, per provider, over
/// the last week.
async fn observed_boots(tx: &mut Transaction<'static, Postgres>) -> Result<BTreeMap<String, u64>> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT m.provider, percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM j.at - r.at))::float8
         FROM events r
         JOIN events j ON j.subject = r.subject AND j.kind = 'machine.joined'
         JOIN machines m ON m.name = r.subject
         WHERE r.kind = 'machine.requested' AND r.at > now() - interval '7 days'
         GROUP BY m.provider",
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(provider, seconds)| (provider, seconds.max(0.0).ceil() as u64)).collect())
}
