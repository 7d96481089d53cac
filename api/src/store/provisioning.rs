//! Machines Canopy buys: their records from "requested" to "terminated", written before and
//! after each provider call so that a crash anywhere leaves something to reconcile.

use super::machines::to_i64;
use super::{Result, Store, StoreError, record};
use crate::auth;
use canopy_core::Resources;
use canopy_core::policy::Binding;
use canopy_core::schedule::{Constraints, Provision, RunningTask, Snapshot, Spread, TaskAsk};
use canopy_core::spec::PlacementSpec;
use sqlx::{Postgres, Transaction};
use std::time::Duration;
use uuid::Uuid;

/// An offering the provider recently had no capacity for, or (`whole_region`) a region of
/// the provider whose quota ran out.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Exhausted {
    pub provider: String,
    pub region: String,
    pub offering: String,
    pub whole_region: bool,
}

/// A machine the provisioning controller has to act on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProvisionedMachine {
    pub id: Uuid,
    pub name: String,
    pub state: String,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub offering: String,
    pub spot: bool,
    pub capacity_milli_cpu: i64,
    pub capacity_memory: i64,
    pub provider_id: Option<String>,
}

const COLUMNS: &str =
    "id, name, state, provider, region, zone, offering, spot, capacity_milli_cpu, capacity_memory, provider_id";

impl Store {
    pub async fn cluster_id(&self) -> Result<Uuid> {
        Ok(sqlx::query_scalar("SELECT cluster_id FROM settings").fetch_one(&self.pool).await?)
    }

    /// Records machines the plan wants bought, and assigns their tasks to them, in the
    /// placement transaction. Returns the new machine ids.
    pub(super) async fn record_provisions(
        tx: &mut Transaction<'static, Postgres>,
        provisions: &[Provision],
    ) -> Result<usize> {
        for provision in provisions {
            let id = Uuid::new_v4();
            let name = format!("{}-{}", provision.provider, &id.simple().to_string()[..8]);
            sqlx::query(
                "INSERT INTO machines (id, name, provider, address, agent_endpoint, control_key, capacity_milli_cpu,
                                       capacity_memory, cgroup_version, state, region, zone, offering, spot, price_micros,
                                       sunk, provisioned, last_heartbeat)
                 VALUES ($1, $2, $3, '', '', '', $4, $5, 0, 'requested', $6, $7, $8, $9, $10, $11, true, now())",
            )
            .bind(id)
            .bind(&name)
            .bind(&provision.provider)
            .bind(to_i64(provision.capacity.milli_cpu, "capacity")?)
            .bind(to_i64(provision.capacity.memory_bytes, "capacity")?)
            .bind(&provision.region)
            .bind(&provision.zone)
            .bind(&provision.instance_type)
            .bind(provision.spot)
            .bind(to_i64(provision.price, "price")?)
            .bind(provision.sunk)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE tasks SET state = 'assigned', machine_id = $2, assigned_at = now(), message = 'waiting for a new machine to boot'
                 WHERE id = ANY($1) AND state = 'pending'",
            )
            .bind(&provision.tasks)
            .bind(id)
            .execute(&mut **tx)
            .await?;
            let detail = serde_json::json!({
                "provider": provision.provider, "region": provision.region, "zone": provision.zone,
                "instance_type": provision.instance_type, "spot": provision.spot,
                "price_per_hour": provision.price as f64 / 1e6, "tasks": provision.tasks.len(),
            });
            record(tx, "system", "machine.requested", &name, None, detail).await?;
        }
        Ok(provisions.len())
    }

    pub async fn provisioned_in(&self, states: &[&str]) -> Result<Vec<ProvisionedMachine>> {
        let sql = format!("SELECT {COLUMNS} FROM machines WHERE provisioned AND state = ANY($1) ORDER BY created_at");
        let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
        Ok(sqlx::query_as::<_, ProvisionedMachine>(sqlx::AssertSqlSafe(sql))
            .bind(&states)
            .fetch_all(&self.pool)
            .await?)
    }

    /// A fresh single-use join token bound to a machine being bought. Earlier tokens for the
    /// same machine stay valid until they expire (an instance created just before a crash
    /// carries one of them); once one is used the machine is joined and the rest are useless.
    pub async fn machine_join_token(&self, machine: Uuid, ttl: Duration) -> Result<String> {
        let secret = auth::new_secret("cnj")?;
        sqlx::query("INSERT INTO join_tokens (digest, expires_at, machine_id) VALUES ($1, now() + make_interval(secs => $2), $3)")
            .bind(auth::digest(&secret))
            .bind(ttl.as_secs_f64())
            .bind(machine)
            .execute(&self.pool)
            .await?;
        Ok(secret)
    }

    /// The provider has the machine: wait for its agent until the boot deadline.
    pub async fn mark_booting(
        &self,
        machine: Uuid,
        provider_id: &str,
        zone: &str,
        boot_timeout: Duration,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let name: Option<String> = sqlx::query_scalar(
            "UPDATE machines SET state = 'booting', provider_id = $2, zone = CASE WHEN $3 = '' THEN zone ELSE $3 END,
                    boot_deadline = now() + make_interval(secs => $4)
             WHERE id = $1 AND state = 'requested' RETURNING name",
        )
        .bind(machine)
        .bind(provider_id)
        .bind(zone)
        .bind(boot_timeout.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(name) = name {
            record(&mut tx, "system", "machine.created", &name, None, serde_json::json!({"provider_id": provider_id}))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The machine failed (did not boot, was interrupted, vanished, or could not be bought):
    /// its tasks are lost and replaced; it still has to be terminated at the provider.
    pub async fn mark_failed(&self, machine: Uuid, reason: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let name: Option<String> = sqlx::query_scalar(
            "UPDATE machines SET state = 'failed', state_reason = $2
             WHERE id = $1 AND state IN ('requested', 'booting', 'ready', 'draining', 'lost') RETURNING name",
        )
        .bind(machine)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(name) = name {
            let lost = lose_tasks(&mut tx, machine, reason).await?;
            record(
                &mut tx,
                "system",
                "machine.failed",
                &name,
                None,
                serde_json::json!({"reason": reason, "tasks_lost": lost}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The offerings that failed for lack of capacity within `window`, and the regions whose
    /// quota ran out.
    pub async fn recently_exhausted(&self, window: Duration) -> Result<Vec<Exhausted>> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT provider, region, offering, state_reason LIKE 'quota exceeded%' AS whole_region
             FROM machines
             WHERE state IN ('failed', 'terminated')
               AND (state_reason LIKE 'insufficient capacity%' OR state_reason LIKE 'quota exceeded%')
               AND created_at > now() - make_interval(secs => $1)",
        )
        .bind(window.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// What consolidation looks at: ready machines and the tasks on them. `None` while any
    /// machine is still being bought (consolidating a pool that is growing would fight the
    /// planner) or a provider is being evacuated.
    pub async fn consolidation_snapshot(&self) -> Result<Option<Snapshot>> {
        let mut tx = self.begin().await?;
        // An evacuation moves work itself: consolidation waits until it is over.
        let growing: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM machines WHERE state IN ('requested', 'booting'))
                 OR EXISTS (SELECT 1 FROM evacuations WHERE state = 'running')",
        )
        .fetch_one(&mut *tx)
        .await?;
        if growing {
            return Ok(None);
        }
        let machines = Self::ready_machines(&mut tx).await?;
        // `placement` is NULL for specs without one: a task may only move where it may run.
        // So is what its policies bind it to.
        type Row = (Uuid, Uuid, Uuid, i64, i64, Option<serde_json::Value>, Option<serde_json::Value>);
        let tasks: Vec<Row> = sqlx::query_as(
            "SELECT t.id, t.app_id, t.machine_id, t.milli_cpu, t.memory, v.spec->'placement', a.policy_binding
             FROM tasks t JOIN machines m ON m.id = t.machine_id
                          JOIN app_versions v ON v.app_id = t.app_id AND v.version = t.version
                          JOIN apps a ON a.id = t.app_id
             WHERE t.state IN ('assigned', 'running') AND m.state = 'ready'",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let running = tasks
            .into_iter()
            .map(|(id, app, machine, cpu, memory, placement, binding)| {
                let placement: PlacementSpec = match placement {
                    Some(placement) => serde_json::from_value(placement)
                        .map_err(|e| StoreError::Corrupt(format!("app {app}: placement: {e}")))?,
                    None => PlacementSpec::default(),
                };
                let binding: Binding = match binding {
                    Some(binding) => serde_json::from_value(binding)
                        .map_err(|e| StoreError::Corrupt(format!("app {app}: policy binding: {e}")))?,
                    None => Binding::default(),
                };
                let own = Constraints { arch: Some("amd64".into()), ..placement.constraints() };
                // With no place left it stays where it is: its machine is not drained.
                let (constraints, stuck) = match binding.constrain(&own) {
                    Some(constraints) => (constraints, false),
                    None => (own, true),
                };
                Ok(RunningTask {
                    task: TaskAsk {
                        id,
                        group: app.to_string(),
                        resources: Resources::new(cpu.max(0) as u64, memory.max(0) as u64),
                        constraints,
                        // Consolidation never puts two replicas of one app on one machine.
                        spread: Spread { max_per_machine: 1, ..Default::default() },
                        ..Default::default()
                    },
                    machine,
                    do_not_disrupt: stuck,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Snapshot { machines, running, ..Default::default() }))
    }

    /// Starts draining bought machines a consolidation plan gives back; their tasks get
    /// successors elsewhere and stop once those are healthy, then the machines are terminated.
    /// Empty machines are left to the idle timeout, which is there to avoid churn.
    pub async fn drain_machines(&self, machines: &[Uuid]) -> Result<usize> {
        let Some(mut tx) = self.begin_leader().await? else { return Ok(0) };
        let drained: Vec<String> = sqlx::query_scalar(
            "UPDATE machines m SET state = 'draining', state_reason = 'consolidation'
             WHERE provisioned AND state = 'ready' AND id = ANY($1)
               AND EXISTS (SELECT 1 FROM tasks t WHERE t.machine_id = m.id AND t.state IN ('assigned', 'running'))
             RETURNING name",
        )
        .bind(machines)
        .fetch_all(&mut *tx)
        .await?;
        for name in &drained {
            record(&mut tx, "system", "machine.draining", name, None, serde_json::json!({"reason": "consolidation"}))
                .await?;
        }
        tx.commit().await?;
        Ok(drained.len())
    }

    /// Machines still booting past their deadline.
    pub async fn boot_timed_out(&self) -> Result<Vec<ProvisionedMachine>> {
        let sql = format!("SELECT {COLUMNS} FROM machines WHERE state = 'booting' AND boot_deadline < now()");
        Ok(sqlx::query_as::<_, ProvisionedMachine>(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?)
    }

    /// Bought machines that have run no task for `idle` start draining (and are terminated
    /// once empty). Returns how many started. Not while a provider is being evacuated: the
    /// machines bought for its work may wait for their wave.
    pub async fn drain_idle(&self, idle: Duration) -> Result<usize> {
        let Some(mut tx) = self.begin_leader().await? else { return Ok(0) };
        let evacuating: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM evacuations WHERE state = 'running')")
            .fetch_one(&mut *tx)
            .await?;
        if evacuating {
            tx.rollback().await?;
            return Ok(0);
        }
        sqlx::query(
            "UPDATE machines m SET idle_since = CASE
                 WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.machine_id = m.id AND t.state IN ('assigned', 'running')) THEN NULL
                 ELSE COALESCE(m.idle_since, now()) END
             WHERE m.provisioned AND m.state = 'ready'",
        )
        .execute(&mut *tx)
        .await?;
        let drained: Vec<String> = sqlx::query_scalar(
            "UPDATE machines SET state = 'draining', state_reason = 'idle'
             WHERE provisioned AND state = 'ready' AND idle_since < now() - make_interval(secs => $1) RETURNING name",
        )
        .bind(idle.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        for name in &drained {
            record(&mut tx, "system", "machine.draining", name, None, serde_json::json!({"reason": "idle"})).await?;
        }
        tx.commit().await?;
        Ok(drained.len())
    }

    /// Draining machines with no task left, and lost bought machines, are to be terminated.
    pub async fn to_terminate(&self) -> Result<Vec<ProvisionedMachine>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM machines m WHERE provisioned AND (state IN ('terminating', 'failed', 'lost')
                OR (state = 'draining' AND NOT EXISTS (
                    SELECT 1 FROM tasks t WHERE t.machine_id = m.id AND t.state IN ('assigned', 'running'))))"
        );
        Ok(sqlx::query_as::<_, ProvisionedMachine>(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?)
    }

    pub async fn mark_terminated(&self, machine: Uuid) -> Result<()> {
        let mut tx = self.begin().await?;
        let name: Option<String> = sqlx::query_scalar(
            "UPDATE machines SET state = 'terminated', terminated_at = now() WHERE id = $1 AND state <> 'terminated' RETURNING name",
        )
        .bind(machine)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(name) = name {
            lose_tasks(&mut tx, machine, "machine terminated").await?;
            record(&mut tx, "system", "machine.terminated", &name, None, serde_json::json!({})).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every machine record this control plane has (not terminated long ago), by id, for
    /// reconciliation with the provider's tagged machines.
    pub async fn known_machines(&self) -> Result<Vec<ProvisionedMachine>> {
        let sql = format!("SELECT {COLUMNS} FROM machines WHERE provisioned");
        Ok(sqlx::query_as::<_, ProvisionedMachine>(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?)
    }
}

/// Marks a machine's active tasks lost (their replacements are created by the app controller).
async fn lose_tasks(tx: &mut Transaction<'static, Postgres>, machine: Uuid, reason: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "WITH lost AS (UPDATE tasks SET state = 'lost', finished_at = now(), message = $2
                       WHERE machine_id = $1 AND state IN ('assigned', 'running') RETURNING 1)
         SELECT COUNT(*) FROM lost",
    )
    .bind(machine)
    .bind(reason)
    .fetch_one(&mut **tx)
    .await?)
}
