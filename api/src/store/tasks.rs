//! Tasks: what agents report, what they should run, and the two controller steps that keep
//! apps' instances placed (reconcile apps into tasks, then place pending tasks).

use super::machines::to_i64;
use super::{Result, Store, StoreError, record};
use crate::auth::Scope;
use canopy_core::Resources;
use canopy_core::policy::Binding;
use canopy_core::schedule::{
    Catalog, Constraints, Policy, Quota, RunningTask, Snapshot, SpotPolicy, TaskAsk, WorkloadKind, schedule,
};
use canopy_core::spec::{AppSpec, PlacementSpec};
use canopy_core::task::TaskState;
use canopy_core::wire::{RunState, TaskAssignment, TaskReport};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// Seed for placement tie-breaks. Fixed, so the same state gives the same placement.
const PLACEMENT_SEED: u64 = 0x5eed;

/// Where to fetch one task's logs from.
#[derive(Debug, Clone)]
pub struct LogTarget {
    pub task_id: Uuid,
    pub agent_endpoint: String,
    pub control_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlacementOutcome {
    pub placed: usize,
    pub unplaced: usize,
    pub machines_requested: usize,
}

#[derive(sqlx::FromRow)]
struct LiveApp {
    id: Uuid,
    team_id: Uuid,
    name: String,
    version: i32,
    stable_version: Option<i32>,
    promoted: bool,
    instances: i32,
    deleted: bool,
    spec: serde_json::Value,
    job_state: String,
    job_message: String,
    /// Milliseconds since a job started.
    running_ms: Option<i64>,
}

/// A task waiting for a machine, with what placement needs from its spec.
#[derive(sqlx::FromRow)]
struct PendingTask {
    id: Uuid,
    app_id: Uuid,
    milli_cpu: i64,
    memory: i64,
    interruptible: bool,
    /// NULL for specs without one, including versions stored before it existed.
    placement: Option<serde_json::Value>,
    job: bool,
    priority: i32,
    instance: i32,
    /// What the app's policies bind it to (NULL: nothing beyond its spec).
    binding: Option<serde_json::Value>,
}

#[derive(sqlx::FromRow)]
struct SlotTask {
    id: Uuid,
    app_id: Uuid,
    version: i32,
    instance: i32,
    state: String,
    desired: String,
    healthy: Option<bool>,
    /// Its machine is draining (idle or consolidated away): it moves elsewhere.
    draining: bool,
    /// Milliseconds since it was created.
    age_ms: i64,
    restarts: i32,
    message: String,
}

impl SlotTask {
    fn runs(&self) -> bool {
        self.desired == "run"
    }

    /// Running and not known to be unhealthy: it serves (any version).
    fn serving(&self) -> bool {
        self.runs() && self.state == "running" && self.healthy != Some(false)
    }

    /// Running, and healthy when its spec has a health check: it may replace another.
    fn ready(&self, health_checked: bool) -> bool {
        self.runs()
            && !self.draining
            && self.state == "running"
            && if health_checked { self.healthy == Some(true) } else { self.healthy != Some(false) }
    }
}

impl Store {
    /// Applies an agent's task reports. Reports about tasks the control service already ended
    /// (lost, stopped) change nothing: a task never leaves a terminal state.
    pub(super) async fn apply_reports(
        tx: &mut Transaction<'static, Postgres>,
        machine_id: Uuid,
        reports: &[TaskReport],
    ) -> Result<()> {
        Self::meter_reports(tx, machine_id, reports).await?;
        for report in reports {
            let state = match report.state {
                // Still fetching its artifacts or image: not started yet.
                RunState::Preparing => TaskState::Assigned,
                RunState::Running | RunState::Restarting => TaskState::Running,
                RunState::Exited => TaskState::Exited,
                RunState::Failed => TaskState::Failed,
                RunState::Stopped => TaskState::Stopped,
            };
            let exit = report.last_exit.as_ref();
            let message = match (report.state, exit) {
                (RunState::Preparing, _) => report.progress.clone().unwrap_or_default(),
                (RunState::Restarting, Some(exit)) => format!("restarting after: {}", exit.message),
                (_, Some(exit)) if report.state.is_final() => exit.message.clone(),
                _ => String::new(),
            };
            sqlx::query(
                "UPDATE tasks SET state = $3, pid = $4, ports = $5, healthy = $6, restarts = $7,
                        exit_code = $8, exit_signal = $9, oom_killed = oom_killed OR $10,
                        -- Why the control service stopped it stays, unless the agent says more.
                        message = CASE WHEN $11 = '' AND desired = 'stop' THEN message ELSE $11 END,
                        cpu_usec = $12, memory_bytes = $13, memory_peak = $14, memory_byte_seconds = $15,
                        memory_sampled_ms = $16,
                        started_at = CASE WHEN $3 = 'assigned' THEN started_at ELSE COALESCE(started_at, now()) END,
                        finished_at = CASE WHEN $3 IN ('exited', 'failed', 'stopped') THEN now() END
                 WHERE id = $1 AND machine_id = $2 AND state IN ('assigned', 'running')",
            )
            .bind(report.task_id)
            .bind(machine_id)
            .bind(state.as_str())
            .bind(report.pid.map(|p| p as i32))
            .bind(serde_json::to_value(&report.ports).map_err(|e| StoreError::Invalid(e.to_string()))?)
            .bind(report.healthy)
            .bind(report.restarts as i32)
            .bind(exit.and_then(|e| e.code))
            .bind(exit.and_then(|e| e.signal))
            .bind(exit.is_some_and(|e| e.oom_killed))
            .bind(message)
            .bind(to_i64(report.usage.cpu_usec, "usage.cpu_usec")?)
            .bind(to_i64(report.usage.memory_bytes, "usage.memory_bytes")?)
            .bind(to_i64(report.usage.memory_peak_bytes, "usage.memory_peak_bytes")?)
            .bind(to_i64(report.usage.memory_byte_seconds, "usage.memory_byte_seconds")?)
            .bind(to_i64(report.usage.memory_sampled_ms, "usage.memory_sampled_ms")?)
            .execute(&mut **tx)
            .await?;
        }
        // A task we asked to stop that the agent no longer reports is gone.
        let reported: Vec<Uuid> = reports.iter().map(|r| r.task_id).collect();
        sqlx::query(
            "UPDATE tasks SET state = 'stopped', finished_at = now()
             WHERE machine_id = $1 AND desired = 'stop' AND state IN ('assigned', 'running') AND NOT (id = ANY($2))",
        )
        .bind(machine_id)
        .bind(&reported)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Adds what each active task used since its previous report to its row for the current UTC
    /// hour (one row per task-hour). Counters that went down were restarted (a new agent
    /// process): the new value is the increase. Peak memory is the highest sample in the hour,
    /// and the cgroup's all-time peak when it rose since the previous report.
    async fn meter_reports(
        tx: &mut Transaction<'static, Postgres>,
        machine_id: Uuid,
        reports: &[TaskReport],
    ) -> Result<()> {
        let mut columns: [Vec<i64>; 5] = Default::default();
        for report in reports {
            let usage = &report.usage;
            for (column, (value, field)) in columns.iter_mut().zip([
                (usage.cpu_usec, "usage.cpu_usec"),
                (usage.memory_bytes, "usage.memory_bytes"),
                (usage.memory_peak_bytes, "usage.memory_peak_bytes"),
                (usage.memory_byte_seconds, "usage.memory_byte_seconds"),
                (usage.memory_sampled_ms, "usage.memory_sampled_ms"),
            ]) {
                column.push(to_i64(value, field)?);
            }
        }
        let ids: Vec<Uuid> = reports.iter().map(|r| r.task_id).collect();
        let [cpu, memory, peak, byte_seconds, sampled_ms] = columns;
        sqlx::query(
            "INSERT INTO task_usage_hours (task_id, hour, cpu_usec, memory_byte_seconds, memory_sampled_ms, memory_peak)
             SELECT t.id, date_trunc('hour', now(), 'UTC'),
                    CASE WHEN r.cpu >= t.cpu_usec THEN r.cpu - t.cpu_usec ELSE r.cpu END,
                    CASE WHEN r.mbs >= t.memory_byte_seconds THEN r.mbs - t.memory_byte_seconds ELSE r.mbs END,
                    CASE WHEN r.sms >= t.memory_sampled_ms THEN r.sms - t.memory_sampled_ms ELSE r.sms END,
                    GREATEST(r.mem, CASE WHEN r.peak > t.memory_peak THEN r.peak ELSE 0 END)
             FROM unnest($2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
                  AS r(id, cpu, mem, peak, mbs, sms)
             JOIN tasks t ON t.id = r.id
             WHERE t.machine_id = $1 AND t.state IN ('assigned', 'running')
               AND (r.cpu <> t.cpu_usec OR r.sms <> t.memory_sampled_ms OR r.peak > t.memory_peak)
             ON CONFLICT (task_id, hour) DO UPDATE SET
                cpu_usec = task_usage_hours.cpu_usec + EXCLUDED.cpu_usec,
                memory_byte_seconds = task_usage_hours.memory_byte_seconds + EXCLUDED.memory_byte_seconds,
                memory_sampled_ms = task_usage_hours.memory_sampled_ms + EXCLUDED.memory_sampled_ms,
                memory_peak = GREATEST(task_usage_hours.memory_peak, EXCLUDED.memory_peak)",
        )
        .bind(machine_id)
        .bind(&ids)
        .bind(&cpu)
        .bind(&memory)
        .bind(&peak)
        .bind(&byte_seconds)
        .bind(&sampled_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Everything `machine_id` should be running now.
    pub(super) async fn desired_tasks(
        tx: &mut Transaction<'static, Postgres>,
        machine_id: Uuid,
    ) -> Result<Vec<TaskAssignment>> {
        let rows: Vec<(Uuid, String, serde_json::Value, i32)> = sqlx::query_as(
            "SELECT t.id, a.name, v.spec, t.instance FROM tasks t
             JOIN apps a ON a.id = t.app_id
             JOIN app_versions v ON v.app_id = t.app_id AND v.version = t.version
             WHERE t.machine_id = $1 AND t.desired = 'run' AND t.state IN ('assigned', 'running')
             ORDER BY t.id",
        )
        .bind(machine_id)
        .fetch_all(&mut **tx)
        .await?;
        rows.into_iter()
            .map(|(task_id, app, spec, instance)| {
                let spec: AppSpec =
                    serde_json::from_value(spec).map_err(|e| StoreError::Corrupt(format!("app {app}: {e}")))?;
                Ok(assignment(task_id, app, spec, instance))
            })
            .collect()
    }

    /// App controller step: creates tasks for missing instances of each app's current version,
    /// stops surplus instances, and retires old-version tasks once their replacement runs.
    /// Idempotent: a second call with nothing changed does nothing.
    pub async fn reconcile_apps(&self) -> Result<usize> {
        let Some(mut tx) = self.begin_leader().await? else { return Ok(0) };
        let apps = sqlx::query_as::<_, LiveApp>(
            "SELECT a.id, a.team_id, a.name, a.version, a.stable_version, a.promoted, a.instances,
                    a.deleted_at IS NOT NULL AS deleted, v.spec, a.job_state, a.job_message,
                    (EXTRACT(EPOCH FROM now() - a.started_at) * 1000)::bigint AS running_ms
             FROM apps a
             JOIN app_versions v ON v.app_id = a.id AND v.version = a.version
             WHERE (a.deleted_at IS NULL AND a.job_state NOT IN ('succeeded', 'failed'))
                OR EXISTS (SELECT 1 FROM tasks t WHERE t.app_id = a.id AND t.state = 'pending')",
        )
        .fetch_all(&mut *tx)
        .await?;
        let tasks = sqlx::query_as::<_, SlotTask>(
            "SELECT t.id, t.app_id, t.version, t.instance, t.state, t.desired, t.healthy,
                    COALESCE(m.state = 'draining', false) AS draining,
                    (EXTRACT(EPOCH FROM now() - t.created_at) * 1000)::bigint AS age_ms, t.restarts, t.message
             FROM tasks t LEFT JOIN machines m ON m.id = t.machine_id
             WHERE t.state NOT IN ('lost', 'stopped') AND t.app_id = ANY($1)",
        )
        .bind(apps.iter().map(|a| a.id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let jobs: Vec<Uuid> = apps.iter().filter(|a| a.spec.get("job").is_some()).map(|a| a.id).collect();
        let mut runs: HashMap<Uuid, Vec<super::jobs::Run>> = HashMap::new();
        for run in super::jobs::load_runs(&mut tx, &jobs).await? {
            runs.entry(run.app_id).or_default().push(run);
        }
        let mut changes = 0;
        for app in apps {
            let LiveApp { id: app_id, ref name, version, stable_version, promoted, instances, deleted, .. } = app;
            let spec: AppSpec =
                serde_json::from_value(app.spec).map_err(|e| StoreError::Corrupt(format!("app {name}: {e}")))?;
            if let Some(job) = &spec.job
                && !deleted
            {
                let app = super::jobs::JobApp {
                    id: app_id,
                    team: app.team_id,
                    name,
                    version,
                    spec: &spec,
                    job,
                    state: &app.job_state,
                    message: &app.job_message,
                    running_ms: app.running_ms,
                    runs: runs.get(&app_id).map_or(&[], Vec::as_slice),
                };
                changes += super::jobs::reconcile_job(&mut tx, app).await?;
                continue;
            }
            let wanted = if deleted { 0 } else { instances };
            let mine: Vec<&SlotTask> = tasks.iter().filter(|t| t.app_id == app_id).collect();
            let checked = spec.health.is_some();
            let update = spec.update;
            let rolling = !deleted && stable_version.is_some_and(|stable| stable != version);

            // A rollout fails when a new instance fails, turns unhealthy, or is not ready in
            // time; it then goes back to the last version that was fully rolled out, whose
            // instances are still there (an old instance stops only once its successor is ready).
            if rolling
                && update.auto_rollback
                && let Some(stable) = stable_version
                && let Some((task, why)) = mine.iter().filter(|t| t.version == version && t.runs()).find_map(|t| {
                    let why = if matches!(t.state.as_str(), "failed" | "exited") {
                        format!("{} (it ended)", t.state)
                    } else if t.healthy == Some(false) {
                        "failed its health checks".to_string()
                    } else if t.restarts > 0 {
                        let last = if t.message.is_empty() { String::new() } else { format!(": {}", t.message) };
                        format!("was restarted {} times{last}", t.restarts)
                    } else if !t.ready(checked) && t.age_ms > update.health_deadline.0 as i64 {
                        format!("was not ready within {}", update.health_deadline)
                    } else {
                        return None;
                    };
                    Some((t, why))
                })
            {
                let reason = format!("rolled back from v{version}: instance {} {why}", task.instance);
                tracing::warn!(app = %name, from = version, to = stable, %reason, "rollout failed");
                sqlx::query("UPDATE apps SET version = $2, rollout = $3, updated_at = now() WHERE id = $1")
                    .bind(app_id)
                    .bind(stable)
                    .bind(&reason)
                    .execute(&mut *tx)
                    .await?;
                let detail = serde_json::json!({"from": version, "to": stable, "reason": reason});
                record(&mut tx, "system", "app.rolled_back", name, Some(app.team_id), detail).await?;
                changes += 1;
                continue;
            }

            let current = |instance: i32| {
                mine.iter().find(|t| t.version == version && t.instance == instance && t.runs() && !t.draining)
            };
            // What the rollout already spends: slots where a new instance is coming up while the
            // old one still serves (surge), or while none serves (unavailable).
            let (mut surge, mut unavailable) = (0u32, 0u32);
            for instance in 0..wanted {
                if let Some(new) = current(instance)
                    && !new.ready(checked)
                {
                    let old_serves = mine.iter().any(|t| t.instance == instance && t.id != new.id && t.serving());
                    if old_serves { surge += 1 } else { unavailable += 1 }
                }
            }
            // A canary step: only `canary` slots get the new version until it is promoted.
            let canary_hold = rolling && update.canary > 0 && !promoted;
            let mut updated = (0..wanted).filter(|&i| current(i).is_some()).count() as u32;
            let mut to_stop = Vec::new();
            for instance in 0..wanted {
                if current(instance).is_some() {
                    continue;
                }
                // The slot's other instance: an old version's, or one on a draining machine.
                let old = mine.iter().find(|t| t.instance == instance && t.runs());
                let start = match old {
                    // A new slot, a lost instance, a move off a draining machine, or an old
                    // instance that serves nobody: no availability to protect.
                    None => true,
                    Some(old) if old.version == version || !old.serving() => true,
                    Some(_) if canary_hold && updated >= update.canary => false,
                    Some(old) => {
                        if surge < update.max_surge {
                            surge += 1;
                            true
                        } else if unavailable < update.max_unavailable {
                            unavailable += 1;
                            to_stop.push(old.id);
                            true
                        } else {
                            false
                        }
                    }
                };
                if start {
                    updated += 1;
                    insert_task(&mut tx, app_id, version, instance, &spec).await?;
                    changes += 1;
                }
            }
            let ready: HashSet<i32> =
                mine.iter().filter(|t| t.version == version && t.ready(checked)).map(|t| t.instance).collect();
            for task in &mine {
                if !task.runs() || to_stop.contains(&task.id) {
                    continue;
                }
                let surplus = task.instance >= wanted;
                // Replace an old version's instance, or one on a draining machine, only once its
                // successor runs and is healthy, so an app never loses all of its instances to
                // an update or a consolidation.
                let superseded = (task.version != version || task.draining) && ready.contains(&task.instance);
                let stale_pending = task.version != version && task.state == "pending";
                if surplus || superseded || stale_pending {
                    to_stop.push(task.id);
                }
            }
            if !to_stop.is_empty() {
                changes += to_stop.len();
                sqlx::query("UPDATE tasks SET desired = 'stop' WHERE id = ANY($1)")
                    .bind(&to_stop)
                    .execute(&mut *tx)
                    .await?;
            }
            // The canaries are healthy: the rollout waits for a person.
            if canary_hold && ready.len() as u32 >= update.canary.min(wanted as u32) {
                let paused = format!(
                    "paused: {} canary instance(s) of v{version} healthy; `canopy promote {name}` goes on, \
                     `canopy rollback {name}` goes back",
                    ready.len()
                );
                changes += sqlx::query("UPDATE apps SET rollout = $2 WHERE id = $1 AND rollout <> $2")
                    .bind(app_id)
                    .bind(&paused)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as usize;
            }
            // Every slot runs a ready instance of this version: the rollout is complete.
            if !deleted && stable_version != Some(version) && (0..wanted).all(|i| ready.contains(&i)) {
                sqlx::query("UPDATE apps SET stable_version = $2, rollout = 'complete' WHERE id = $1")
                    .bind(app_id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                changes += 1;
            }
        }
        // Pending tasks nobody wants any more never ran: they are simply stopped.
        let dropped = sqlx::query(
            "UPDATE tasks SET state = 'stopped', finished_at = now() WHERE state = 'pending' AND desired = 'stop'",
        )
        .execute(&mut *tx)
        .await?;
        changes += dropped.rows_affected() as usize;
        tx.commit().await?;
        Ok(changes)
    }

    /// Placement controller step: asks canopy-core where pending tasks go and records the
    /// answer; unplaced tasks keep the reason in their message.
    /// `quotas` are the providers' limits on what Canopy may hold at once.
    pub async fn place_pending(
        &self,
        catalog: &Arc<Catalog>,
        quotas: &BTreeMap<String, Quota>,
    ) -> Result<PlacementOutcome> {
        let Some(mut tx) = self.begin_leader().await? else { return Ok(PlacementOutcome::default()) };
        // `placement` is NULL for specs without one, including versions stored before it existed.
        let pending: Vec<PendingTask> = sqlx::query_as(
            "SELECT t.id, t.app_id, t.milli_cpu, t.memory,
                    COALESCE((v.spec->>'interruptible')::boolean, false) AS interruptible,
                    v.spec->'placement' AS placement, v.spec ? 'job' AS job,
                    COALESCE((v.spec->>'priority')::int, 0) AS priority, t.instance, a.policy_binding AS binding
             FROM tasks t JOIN app_versions v ON v.app_id = t.app_id AND v.version = t.version
             JOIN apps a ON a.id = t.app_id
             WHERE t.state = 'pending' AND t.desired = 'run' ORDER BY t.created_at, t.id",
        )
        .fetch_all(&mut *tx)
        .await?;
        if pending.is_empty() {
            // Ended now rather than when the connection is next used, which would hold the
            // controllers' lock until then and make the next step's transactions skip.
            tx.rollback().await?;
            return Ok(PlacementOutcome::default());
        }
        // Spot only ever serves interruptible work; apps say whether they are.
        let policy =
            Policy { spot: SpotPolicy { service: true, batch: true }, quotas: quotas.clone(), ..Default::default() };
        // Running batch-job tasks may be evicted for higher-priority work that fits nowhere.
        let running: Vec<(Uuid, Uuid, Uuid, i64, i64, i32, bool)> = sqlx::query_as(
            "SELECT t.id, t.app_id, t.machine_id, t.milli_cpu, t.memory, COALESCE((v.spec->>'priority')::int, 0),
                    v.spec ? 'job'
             FROM tasks t JOIN app_versions v ON v.app_id = t.app_id AND v.version = t.version
             JOIN machines m ON m.id = t.machine_id
             WHERE t.state IN ('assigned', 'running') AND t.desired = 'run' AND m.state = 'ready'",
        )
        .fetch_all(&mut *tx)
        .await?;
        let running = running
            .into_iter()
            .map(|(id, app, machine, cpu, memory, priority, job)| RunningTask {
                task: TaskAsk {
                    id,
                    group: app.to_string(),
                    resources: Resources::new(cpu.max(0) as u64, memory.max(0) as u64),
                    priority,
                    preemptible: job,
                    kind: if job { WorkloadKind::Batch } else { WorkloadKind::Service },
                    ..Default::default()
                },
                machine,
                do_not_disrupt: false,
            })
            .collect();
        let snapshot =
            Snapshot { machines: Self::ready_machines(&mut tx).await?, catalog: catalog.clone(), policy, running };
        // A task its policies leave no place for waits, saying so (the binding is re-derived
        // whenever policies or catalogs change).
        let mut bound_nowhere = Vec::new();
        let mut asks: Vec<TaskAsk> = Vec::with_capacity(pending.len());
        for task in &pending {
            let PendingTask { id, app_id, milli_cpu: cpu, memory, interruptible, placement, job, priority, .. } = task;
            let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("app {app_id}: {what}: {e}"));
            let placement: PlacementSpec = match placement {
                Some(placement) => serde_json::from_value(placement.clone()).map_err(|e| corrupt("placement", e))?,
                None => PlacementSpec::default(),
            };
            let ask = TaskAsk {
                id: *id,
                group: app_id.to_string(),
                resources: Resources::new((*cpu).max(0) as u64, (*memory).max(0) as u64),
                priority: *priority,
                interruptible: *interruptible,
                kind: if *job { WorkloadKind::Batch } else { WorkloadKind::Service },
                // Agents and sample apps are built for amd64; a spec field can lift this later.
                constraints: Constraints { arch: Some("amd64".into()), ..placement.constraints() },
                ..Default::default()
            };
            let binding: Option<Binding> = task
                .binding
                .clone()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| corrupt("policy binding", e))?;
            match binding {
                None => asks.push(ask),
                Some(binding) => match binding.apply(&ask, u32::try_from(task.instance).unwrap_or(0)) {
                    Some(ask) => asks.push(ask),
                    None => bound_nowhere.push(*id),
                },
            }
        }
        // A seed from the pending set: deterministic for the same state, different across
        // passes (machine ids the planner mints must not repeat).
        let seed = pending.iter().fold(PLACEMENT_SEED, |seed, t| seed.rotate_left(7) ^ t.id.as_u128() as u64);
        let plan = schedule(&snapshot, &asks, seed);
        // One statement each for every placement and every changed "unplaced" reason (a pass
        // may place or re-explain hundreds of tasks).
        let (placed, machines): (Vec<Uuid>, Vec<Uuid>) = plan.placements.iter().map(|p| (p.task, p.machine)).unzip();
        sqlx::query(
            "UPDATE tasks t SET state = 'assigned', machine_id = p.machine, assigned_at = now(), message = ''
             FROM UNNEST($1::uuid[], $2::uuid[]) AS p(task, machine)
             WHERE t.id = p.task AND t.state = 'pending'",
        )
        .bind(&placed)
        .bind(&machines)
        .execute(&mut *tx)
        .await?;
        for preemption in &plan.preemptions {
            sqlx::query("UPDATE tasks SET desired = 'stop', message = $2 WHERE id = $1 AND desired = 'run'")
                .bind(preemption.task)
                .bind(format!("preempted by task {} of higher priority", preemption.for_task))
                .execute(&mut *tx)
                .await?;
        }
        if !plan.preemptions.is_empty() {
            let detail = serde_json::json!({"evicted": plan.preemptions.len()});
            record(&mut tx, "system", "tasks.preempted", "placement", None, detail).await?;
        }
        let (mut unplaced, mut reasons): (Vec<Uuid>, Vec<String>) =
            plan.unplaced.iter().map(|u| (u.task, format!("unplaced: {}", u.reason))).unzip();
        for task in &bound_nowhere {
            unplaced.push(*task);
            reasons.push("unplaced: its policies and its [placement] leave no place it may run".to_string());
        }
        sqlx::query(
            "UPDATE tasks t SET message = u.reason FROM UNNEST($1::uuid[], $2::text[]) AS u(task, reason)
             WHERE t.id = u.task AND t.message <> u.reason",
        )
        .bind(&unplaced)
        .bind(&reasons)
        .execute(&mut *tx)
        .await?;
        let provisioned = Self::record_provisions(&mut tx, &plan.provisions).await?;
        if !plan.placements.is_empty() {
            let detail = serde_json::json!({"placed": plan.placements.len(), "unplaced": plan.unplaced.len()});
            record(&mut tx, "system", "tasks.placed", "placement", None, detail).await?;
        }
        tx.commit().await?;
        Ok(PlacementOutcome {
            placed: plan.placements.len(),
            unplaced: plan.unplaced.len() + bound_nowhere.len(),
            machines_requested: provisioned,
        })
    }

    /// Where the logs of a task of app `name` can be read: the newest task of `instance`.
    pub async fn log_target(&self, scope: Scope, name: &str, instance: u32) -> Result<LogTarget> {
        let app = self.app(scope, name).await?;
        let row: Option<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT t.id, m.agent_endpoint, m.control_key FROM tasks t LEFT JOIN machines m ON m.id = t.machine_id
             WHERE t.app_id = $1 AND t.instance = $2 AND t.state <> 'pending' ORDER BY t.created_at DESC LIMIT 1",
        )
        .bind(app.summary.id)
        .bind(instance as i32)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((task_id, Some(agent_endpoint), Some(control_key))) => {
                Ok(LogTarget { task_id, agent_endpoint, control_key })
            }
            _ => Err(StoreError::NotFound(format!("app {name:?} has no started instance {instance}"))),
        }
    }
}

/// A new pending task for one instance (a job: one completion index) of an app version.
pub(super) async fn insert_task(
    tx: &mut Transaction<'static, Postgres>,
    app: Uuid,
    version: i32,
    instance: i32,
    spec: &AppSpec,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO tasks (id, app_id, version, instance, state, milli_cpu, memory)
         VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
    )
    .bind(Uuid::new_v4())
    .bind(app)
    .bind(version)
    .bind(instance)
    .bind(to_i64(spec.resources.cpu, "resources.cpu")?)
    .bind(to_i64(spec.resources.memory.0, "resources.memory")?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn assignment(task_id: Uuid, app: String, spec: AppSpec, instance: i32) -> TaskAssignment {
    let mut env = spec.env.into_iter().collect::<BTreeMap<_, _>>();
    // Which instance (for a job: which completion index) this task is.
    env.insert("CANOPY_INSTANCE".into(), instance.to_string());
    TaskAssignment {
        task_id,
        app,
        command: spec.command,
        args: spec.args,
        env,
        resources: spec.resources.resources(),
        pids_limit: spec.resources.pids,
        ports: spec.ports,
        health: spec.health,
        // A job's failed run is retried by the control service, as a new task.
        restart: if spec.job.is_some() {
            canopy_core::spec::RestartSpec { policy: canopy_core::spec::RestartPolicy::Never, ..spec.restart }
        } else {
            spec.restart
        },
        stop_grace_ms: spec.stop_grace.0,
        logs: spec.logs,
        artifacts: spec.artifacts,
        image: spec.image,
        image_auth: spec.image_auth,
    }
}
