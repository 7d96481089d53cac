//! What the autoscaler reads (autoscaled apps and the CPU counters of their running tasks) and
//! writes (a new instance count, with its `app.autoscaled` event).

use super::{Result, Store, StoreError, record};
use canopy_core::spec::AutoscaleSpec;
use uuid::Uuid;

/// An app whose current version has an `[autoscale]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaledApp {
    pub id: Uuid,
    pub name: String,
    pub instances: u32,
    /// The current version's `resources.cpu`: what 100% utilization means for one task.
    pub milli_cpu: u64,
    pub autoscale: AutoscaleSpec,
    /// Running tasks of the current version that the control service still wants.
    pub tasks: Vec<TaskCpu>,
}

/// One task's cumulative CPU time as last reported, and when it was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCpu {
    pub id: Uuid,
    /// CPU time of the task's cgroup since it was created, in microseconds.
    pub cpu_usec: u64,
    /// When the report carrying `cpu_usec` arrived (its machine's last heartbeat), in
    /// microseconds since the Unix epoch, by the database's clock.
    pub reported_at_usec: i64,
}

#[derive(sqlx::FromRow)]
struct AppRow {
    id: Uuid,
    name: String,
    instances: i32,
    milli_cpu: Option<i64>,
    autoscale: serde_json::Value,
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    app_id: Uuid,
    cpu_usec: i64,
    reported_at_usec: i64,
}

impl Store {
    /// The autoscaled apps and their running tasks' CPU counters, or `None` when another
    /// replica holds the controllers' lock.
    #[tracing::instrument(skip_all)]
    pub async fn autoscaled_apps(&self) -> Result<Option<Vec<AutoscaledApp>>> {
        let Some(mut tx) = self.begin_leader().await? else { return Ok(None) };
        let apps = sqlx::query_as::<_, AppRow>(
            "SELECT a.id, a.name, a.instances, (v.spec->'resources'->>'cpu')::bigint AS milli_cpu,
                    v.spec->'autoscale' AS autoscale
             FROM apps a JOIN app_versions v ON v.app_id = a.id AND v.version = a.version
             WHERE a.deleted_at IS NULL AND v.spec ? 'autoscale' ORDER BY a.id",
        )
        .fetch_all(&mut *tx)
        .await?;
        if apps.is_empty() {
            tx.commit().await?;
            return Ok(Some(Vec::new()));
        }
        let tasks = sqlx::query_as::<_, TaskRow>(
            "SELECT t.id, t.app_id, t.cpu_usec,
                    (EXTRACT(EPOCH FROM m.last_heartbeat) * 1000000)::bigint AS reported_at_usec
             FROM tasks t JOIN apps a ON a.id = t.app_id JOIN machines m ON m.id = t.machine_id
             WHERE t.app_id = ANY($1) AND t.version = a.version AND t.state = 'running' AND t.desired = 'run'
             ORDER BY t.id",
        )
        .bind(apps.iter().map(|a| a.id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        apps.into_iter()
            .map(|app| {
                let autoscale: AutoscaleSpec = serde_json::from_value(app.autoscale)
                    .map_err(|e| StoreError::Corrupt(format!("app {}: autoscale: {e}", app.name)))?;
                let tasks = tasks
                    .iter()
                    .filter(|t| t.app_id == app.id)
                    .map(|t| TaskCpu {
                        id: t.id,
                        cpu_usec: t.cpu_usec.max(0) as u64,
                        reported_at_usec: t.reported_at_usec,
                    })
                    .collect();
                Ok(AutoscaledApp {
                    id: app.id,
                    name: app.name,
                    instances: app.instances.max(0) as u32,
                    milli_cpu: app.milli_cpu.unwrap_or(0).max(0) as u64,
                    autoscale,
                    tasks,
                })
            })
            .collect::<Result<_>>()
            .map(Some)
    }

    /// Sets the app's instance count from `from` to `to` and records `app.autoscaled` with
    /// `detail`, unless the count is no longer `from` (a deploy or a manual scale came first)
    /// or another replica leads. Returns whether the count changed.
    #[tracing::instrument(skip_all, fields(app = %app_id, from, to))]
    pub async fn autoscale_app(&self, app_id: Uuid, from: u32, to: u32, detail: serde_json::Value) -> Result<bool> {
        let Some(mut tx) = self.begin_leader().await? else { return Ok(false) };
        let changed: Option<(Uuid, String)> = sqlx::query_as(
            "UPDATE apps SET instances = $3, updated_at = now()
             WHERE id = $1 AND instances = $2 AND deleted_at IS NULL RETURNING team_id, name",
        )
        .bind(app_id)
        .bind(i32::try_from(from).map_err(|_| StoreError::Invalid("instances: too large".into()))?)
        .bind(i32::try_from(to).map_err(|_| StoreError::Invalid("instances: too large".into()))?)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((team, name)) = changed else { return Ok(false) };
        record(&mut tx, "autoscaler", "app.autoscaled", &name, Some(team), detail).await?;
        tx.commit().await?;
        Ok(true)
    }
}
