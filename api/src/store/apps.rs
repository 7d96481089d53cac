//! Apps and their versions: what developers ask for.

use super::{Result, Store, StoreError, record};
use crate::auth::Scope;
use canopy_core::policy::Binding;
use canopy_core::spec::AppSpec;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct AppSummary {
    pub id: Uuid,
    pub team: String,
    pub name: String,
    pub version: i32,
    pub instances: i32,
    pub running: i64,
    pub healthy: i64,
    /// The version last fully rolled out; a failed rollout goes back to it.
    pub stable_version: Option<i32>,
    /// `progressing`, `complete`, or `rolled back from vN: <why>`.
    pub rollout: String,
    /// Jobs only: `waiting`, `running`, `succeeded` or `failed` ('' for services).
    pub job_state: String,
    pub job_message: String,
    /// Why it lost its portability (its policies' min_providers are no longer met), '' while
    /// it has it.
    pub portability: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppDetail {
    #[serde(flatten)]
    pub summary: AppSummary,
    pub spec: AppSpec,
    pub tasks: Vec<TaskRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct TaskRow {
    pub id: Uuid,
    pub version: i32,
    pub instance: i32,
    pub state: String,
    pub desired: String,
    pub machine: Option<String>,
    pub address: Option<String>,
    pub pid: Option<i32>,
    pub ports: serde_json::Value,
    pub healthy: Option<bool>,
    pub restarts: i32,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub oom_killed: bool,
    pub message: String,
    pub cpu_usec: i64,
    pub memory_bytes: i64,
    pub memory_peak: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const SUMMARY: &str = "SELECT a.id, t.name AS team, a.name, a.version, a.instances,
        (SELECT COUNT(*) FROM tasks k WHERE k.app_id = a.id AND k.version = a.version AND k.state = 'running') AS running,
        (SELECT COUNT(*) FROM tasks k WHERE k.app_id = a.id AND k.version = a.version AND k.state = 'running'
            AND k.healthy IS NOT FALSE) AS healthy,
        a.stable_version, a.rollout, a.job_state, a.job_message, a.portability, a.updated_at
    FROM apps a JOIN teams t ON t.id = a.team_id WHERE a.deleted_at IS NULL";

/// A job's dependencies must be jobs of the team, and the team's jobs with this one must
/// form no cycle (the error names it).
async fn check_dependencies(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    team: Uuid,
    name: &str,
    depends_on: &[String],
) -> Result<()> {
    let jobs: Vec<(String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT a.name, v.spec -> 'job' -> 'depends_on' FROM apps a
         JOIN app_versions v ON v.app_id = a.id AND v.version = a.version
         WHERE a.team_id = $1 AND a.deleted_at IS NULL AND v.spec ? 'job'",
    )
    .bind(team)
    .fetch_all(&mut **tx)
    .await?;
    for (index, dependency) in depends_on.iter().enumerate() {
        if !jobs.iter().any(|(job, _)| job == dependency) {
            return Err(StoreError::Invalid(format!(
                "job.depends_on[{index}]: the team has no job named {dependency:?} (submit it first)"
            )));
        }
    }
    let mut nodes: Vec<(String, Vec<String>)> = jobs
        .into_iter()
        .filter(|(job, _)| job != name)
        .map(|(job, deps)| (job, deps.and_then(|d| serde_json::from_value(d).ok()).unwrap_or_default()))
        .collect();
    nodes.push((name.to_string(), depends_on.to_vec()));
    // A job deleted since keeps no one waiting here: only cycles among live jobs matter.
    let names: std::collections::HashSet<String> = nodes.iter().map(|(job, _)| job.clone()).collect();
    for (_, deps) in &mut nodes {
        deps.retain(|d| names.contains(d));
    }
    canopy_core::dag::validate(&nodes).map_err(|e| StoreError::Invalid(format!("job.depends_on: {e}")))?;
    Ok(())
}

impl Store {
    /// Creates the app or, when the spec differs from the current version, adds a version.
    /// Returns the app and whether anything changed.
    pub async fn apply_app(&self, actor: &str, team: Uuid, spec: &AppSpec) -> Result<(AppDetail, bool)> {
        self.apply_app_bound(actor, team, spec, None).await
    }

    /// `apply_app`, also recording (when given) what the policies bind the app to and why it is
    /// not portable ('' when it is), in the same transaction: placement applies the binding to
    /// every task of the app.
    pub async fn apply_app_bound(
        &self,
        actor: &str,
        team: Uuid,
        spec: &AppSpec,
        policy: Option<(&Binding, &str)>,
    ) -> Result<(AppDetail, bool)> {
        let spec_json = serde_json::to_value(spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let instances =
            i32::try_from(spec.instances).map_err(|_| StoreError::Invalid("instances: too large".into()))?;
        let mut tx = self.begin().await?;
        // A job that depends on nothing cannot close a cycle.
        if let Some(job) = spec.job.as_ref().filter(|job| !job.depends_on.is_empty()) {
            check_dependencies(&mut tx, team, &spec.name, &job.depends_on).await?;
        }
        let job_state = if spec.job.is_some() { "waiting" } else { "" };
        let current: Option<(Uuid, i32, serde_json::Value)> = sqlx::query_as(
            "SELECT a.id, a.version, v.spec FROM apps a JOIN app_versions v ON v.app_id = a.id AND v.version = a.version
             WHERE a.team_id = $1 AND a.name = $2 AND a.deleted_at IS NULL FOR UPDATE OF a",
        )
        .bind(team)
        .bind(&spec.name)
        .fetch_optional(&mut *tx)
        .await?;
        let (app_id, version, changed) = match current {
            Some((id, version, stored)) if stored == spec_json => (id, version, false),
            Some((id, _, _)) => {
                // After a rollback the current version is not the newest: number from the newest.
                let newest: i32 = sqlx::query_scalar("SELECT max(version) FROM app_versions WHERE app_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let version = newest + 1;
                // A job whose spec changed runs again, from the start.
                sqlx::query(
                    "UPDATE apps SET version = $2, instances = $3, rollout = 'progressing', job_state = $4,
                                     job_message = '', started_at = NULL, finished_at = NULL, promoted = false,
                                     updated_at = now()
                     WHERE id = $1",
                )
                .bind(id)
                .bind(version)
                .bind(instances)
                .bind(job_state)
                .execute(&mut *tx)
                .await?;
                (id, version, true)
            }
            None => {
                let id = Uuid::new_v4();
                sqlx::query(
                    "INSERT INTO apps (id, team_id, name, version, instances, rollout, job_state)
                     VALUES ($1, $2, $3, 1, $4, 'progressing', $5)",
                )
                .bind(id)
                .bind(team)
                .bind(&spec.name)
                .bind(instances)
                .bind(job_state)
                .execute(&mut *tx)
                .await?;
                (id, 1, true)
            }
        };
        if let Some((binding, portability)) = policy {
            let binding = serde_json::to_value(binding).map_err(|e| StoreError::Invalid(e.to_string()))?;
            sqlx::query("UPDATE apps SET policy_binding = $2, portability = $3 WHERE id = $1")
                .bind(app_id)
                .bind(binding)
                .bind(portability)
                .execute(&mut *tx)
                .await?;
        }
        if changed {
            sqlx::query("INSERT INTO app_versions (app_id, version, spec) VALUES ($1, $2, $3)")
                .bind(app_id)
                .bind(version)
                .bind(&spec_json)
                .execute(&mut *tx)
                .await?;
            let detail = serde_json::json!({"version": version, "instances": spec.instances});
            record(&mut tx, actor, "app.deployed", &spec.name, Some(team), detail).await?;
        }
        tx.commit().await?;
        Ok((self.app(Scope::Team(team), &spec.name).await?, changed))
    }

    pub async fn apps(&self, scope: Scope) -> Result<Vec<AppSummary>> {
        let sql = format!("{SUMMARY} AND ($1::uuid IS NULL OR a.team_id = $1) ORDER BY t.name, a.name");
        Ok(sqlx::query_as::<_, AppSummary>(sqlx::AssertSqlSafe(sql))
            .bind(scope.team_filter())
            .fetch_all(&self.pool)
            .await?)
    }

    /// The app called `name` that `scope` may see. Another team's app is "not found", so its
    /// existence does not leak.
    pub async fn app(&self, scope: Scope, name: &str) -> Result<AppDetail> {
        let sql = format!("{SUMMARY} AND ($1::uuid IS NULL OR a.team_id = $1) AND a.name = $2");
        let mut found = sqlx::query_as::<_, AppSummary>(sqlx::AssertSqlSafe(sql))
            .bind(scope.team_filter())
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        let summary = match found.len() {
            0 => return Err(StoreError::NotFound(format!("app {name:?} does not exist"))),
            1 => found.remove(0),
            _ => return Err(StoreError::Conflict(format!("several teams have an app {name:?}: pass ?team="))),
        };
        let spec: serde_json::Value =
            sqlx::query_scalar("SELECT spec FROM app_versions WHERE app_id = $1 AND version = $2")
                .bind(summary.id)
                .bind(summary.version)
                .fetch_one(&self.pool)
                .await?;
        let mut spec: AppSpec =
            serde_json::from_value(spec).map_err(|e| StoreError::Corrupt(format!("app {name}: {e}")))?;
        // Only agents ever get the registry password back.
        if let Some(auth) = &mut spec.image_auth {
            auth.password = "<hidden>".into();
        }
        let tasks = sqlx::query_as::<_, TaskRow>(
            "SELECT k.id, k.version, k.instance, k.state, k.desired, m.name AS machine, m.address, k.pid, k.ports,
                    k.healthy, k.restarts, k.exit_code, k.exit_signal, k.oom_killed, k.message, k.cpu_usec,
                    k.memory_bytes, k.memory_peak, k.created_at, k.started_at, k.finished_at
             FROM tasks k LEFT JOIN machines m ON m.id = k.machine_id
             WHERE k.app_id = $1 AND (k.state NOT IN ('lost', 'stopped', 'exited', 'failed') OR k.finished_at > now() - interval '1 hour')
             ORDER BY k.instance, k.created_at DESC",
        )
        .bind(summary.id)
        .fetch_all(&self.pool)
        .await?;
        Ok(AppDetail { summary, spec, tasks })
    }

    /// Sets the app's instance count. An autoscaled app's count is brought within its
    /// `[autoscale]` bounds, and the autoscaler moves it from there, as a HorizontalPodAutoscaler
    /// overrides `kubectl scale`; the event's `requested` says what was asked.
    pub async fn scale_app(&self, actor: &str, scope: Scope, name: &str, instances: u32) -> Result<AppDetail> {
        if instances > canopy_core::spec::MAX_INSTANCES {
            return Err(StoreError::Invalid(format!(
                "instances: must be at most {}",
                canopy_core::spec::MAX_INSTANCES
            )));
        }
        let app = self.app(scope, name).await?;
        let requested = instances;
        let instances = app.spec.autoscale.map_or(instances, |autoscale| autoscale.clamp(instances));
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE apps SET instances = $2, updated_at = now() WHERE id = $1 AND deleted_at IS NULL")
            .bind(app.summary.id)
            .bind(instances as i32)
            .execute(&mut *tx)
            .await?;
        let team: Uuid = sqlx::query_scalar("SELECT team_id FROM apps WHERE id = $1")
            .bind(app.summary.id)
            .fetch_one(&mut *tx)
            .await?;
        let mut detail = serde_json::json!({"from": app.summary.instances, "to": instances});
        if let Some(autoscale) = app.spec.autoscale {
            detail["requested"] = requested.into();
            detail["autoscale"] = serde_json::json!({"min": autoscale.min, "max": autoscale.max});
        }
        record(&mut tx, actor, "app.scaled", name, Some(team), detail).await?;
        tx.commit().await?;
        self.app(scope, name).await
    }

    /// Goes back to `to` (default: the last version fully rolled out, or when the current one
    /// is that, the version before it). The old version's instances that still run are kept;
    /// the others are replaced, as in any rollout.
    pub async fn rollback_app(&self, actor: &str, scope: Scope, name: &str, to: Option<i32>) -> Result<AppDetail> {
        let app = self.app(scope, name).await?;
        let current = app.summary.version;
        let target = match to {
            Some(version) => version,
            None => match app.summary.stable_version {
                Some(stable) if stable != current => stable,
                _ => current - 1,
            },
        };
        if target == current {
            return Err(StoreError::Invalid(format!("to: version {target} is already the current version")));
        }
        let mut tx = self.begin().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM app_versions WHERE app_id = $1 AND version = $2)")
                .bind(app.summary.id)
                .bind(target)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Err(StoreError::Invalid(format!("to: app {name:?} has no version {target}")));
        }
        let team: Uuid = sqlx::query_scalar(
            "UPDATE apps SET version = $2, rollout = $3, updated_at = now() WHERE id = $1 RETURNING team_id",
        )
        .bind(app.summary.id)
        .bind(target)
        .bind(format!("rolled back from v{current}: asked by {actor}"))
        .fetch_one(&mut *tx)
        .await?;
        let detail = serde_json::json!({"from": current, "to": target, "reason": "asked"});
        record(&mut tx, actor, "app.rolled_back", name, Some(team), detail).await?;
        tx.commit().await?;
        self.app(scope, name).await
    }

    /// Lets a rollout paused after its canary step go on.
    pub async fn promote_app(&self, actor: &str, scope: Scope, name: &str) -> Result<AppDetail> {
        let app = self.app(scope, name).await?;
        if app.summary.stable_version == Some(app.summary.version) {
            return Err(StoreError::Conflict(format!(
                "app {name:?}: version {} is already fully rolled out; nothing to promote",
                app.summary.version
            )));
        }
        let mut tx = self.begin().await?;
        let team: Uuid = sqlx::query_scalar(
            "UPDATE apps SET promoted = true, rollout = 'progressing', updated_at = now() WHERE id = $1
             RETURNING team_id",
        )
        .bind(app.summary.id)
        .fetch_one(&mut *tx)
        .await?;
        let detail = serde_json::json!({"version": app.summary.version});
        record(&mut tx, actor, "app.promoted", name, Some(team), detail).await?;
        tx.commit().await?;
        self.app(scope, name).await
    }

    /// Deletes the app: its tasks are stopped by the controllers; the name is free again.
    pub async fn delete_app(&self, actor: &str, scope: Scope, name: &str) -> Result<()> {
        let app = self.app(scope, name).await?;
        let mut tx = self.begin().await?;
        let team: Uuid = sqlx::query_scalar("UPDATE apps SET deleted_at = now() WHERE id = $1 RETURNING team_id")
            .bind(app.summary.id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("UPDATE tasks SET desired = 'stop' WHERE app_id = $1 AND desired = 'run'")
            .bind(app.summary.id)
            .execute(&mut *tx)
            .await?;
        record(&mut tx, actor, "app.deleted", name, Some(team), serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(())
    }
}
