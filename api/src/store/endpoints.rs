//! Where an app answers: its healthy instances, for discovery and the entry point.

use super::{Result, Store};
use crate::auth::Scope;
use serde::Serialize;
use uuid::Uuid;

/// One healthy instance of an app and the address it serves its first port on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Endpoint {
    pub instance: i32,
    pub version: i32,
    pub task: Uuid,
    pub machine: String,
    pub provider: String,
    pub address: String,
    pub port: i32,
}

impl Store {
    /// The app's instances that run and passed their health check, or have none (any version:
    /// during a rollout both serve), on ready machines, with the port named `port` (default: the
    /// app's first). Empty when the app does not exist for `scope` or has no port.
    pub async fn endpoints(&self, scope: Scope, app: &str, port: Option<&str>) -> Result<Vec<Endpoint>> {
        Ok(sqlx::query_as::<_, Endpoint>(
            "SELECT t.instance, t.version, t.id AS task, m.name AS machine, m.provider, m.address,
                    (t.ports ->> COALESCE($3, v.spec -> 'ports' ->> 0))::int AS port
             FROM apps a
             JOIN tasks t ON t.app_id = a.id
             JOIN app_versions v ON v.app_id = t.app_id AND v.version = t.version
             JOIN machines m ON m.id = t.machine_id
             WHERE a.deleted_at IS NULL AND a.name = $2 AND ($1::uuid IS NULL OR a.team_id = $1)
               AND t.state = 'running' AND t.desired = 'run' AND m.state = 'ready'
               AND (t.healthy OR (t.healthy IS NULL AND COALESCE(v.spec -> 'health', 'null') = 'null'))
               AND t.ports ->> COALESCE($3, v.spec -> 'ports' ->> 0) IS NOT NULL
             ORDER BY t.instance, t.version",
        )
        .bind(scope.team_filter())
        .bind(app)
        .bind(port)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The team id of the team named `name`, if any (the entry point routes by team name).
    pub async fn team_id(&self, name: &str) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar("SELECT id FROM teams WHERE name = $1").bind(name).fetch_optional(&self.pool).await?)
    }
}
