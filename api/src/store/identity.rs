//! Teams, API tokens and join tokens.

use super::{Result, Store, StoreError, record};
use crate::auth::{self, Caller, Role};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct TeamRow {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A token just created: the secret is returned once and never stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewToken {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub team: Option<String>,
    pub token: String,
}

#[derive(sqlx::FromRow)]
struct CallerRow {
    id: Uuid,
    name: String,
    role: String,
    team_id: Option<Uuid>,
    machine_id: Option<Uuid>,
}

impl Store {
    /// On first start, creates the admin token: `given` if set (from config), else a fresh one
    /// that is returned so the caller can print it once. Does nothing when an admin exists.
    pub async fn bootstrap_admin(&self, given: Option<&str>) -> Result<Option<String>> {
        let mut tx = self.begin().await?;
        // Serialise concurrent first starts of several replicas.
        sqlx::query("LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tokens WHERE role = 'admin' AND revoked_at IS NULL)")
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            return Ok(None);
        }
        let secret = match given {
            Some(token) => token.to_string(),
            None => auth::new_secret("cnp")?,
        };
        sqlx::query("INSERT INTO tokens (id, digest, name, role) VALUES ($1, $2, 'bootstrap-admin', 'admin')")
            .bind(Uuid::new_v4())
            .bind(auth::digest(&secret))
            .execute(&mut *tx)
            .await?;
        record(&mut tx, "system", "token.created", "bootstrap-admin", None, serde_json::json!({"role": "admin"}))
            .await?;
        tx.commit().await?;
        Ok(given.is_none().then_some(secret))
    }

    pub async fn authenticate(&self, secret: &str) -> Result<Option<Caller>> {
        let row = sqlx::query_as::<_, CallerRow>(
            "SELECT id, name, role, team_id, machine_id FROM tokens WHERE digest = $1 AND revoked_at IS NULL",
        )
        .bind(auth::digest(secret))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let role = Role::parse(&row.role)
                .ok_or_else(|| StoreError::Corrupt(format!("token {} has role {:?}", row.id, row.role)))?;
            Ok(Caller { token_id: row.id, name: row.name, role, team_id: row.team_id, machine_id: row.machine_id })
        })
        .transpose()
    }

    pub async fn create_team(&self, actor: &str, name: &str) -> Result<TeamRow> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as::<_, TeamRow>(
            "INSERT INTO teams (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id, name, created_at",
        )
        .bind(Uuid::new_v4())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("team {name:?} already exists")))?;
        record(&mut tx, actor, "team.created", name, Some(row.id), serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn teams(&self) -> Result<Vec<TeamRow>> {
        Ok(sqlx::query_as::<_, TeamRow>("SELECT id, name, created_at FROM teams ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn team_by_name(&self, name: &str) -> Result<TeamRow> {
        sqlx::query_as::<_, TeamRow>("SELECT id, name, created_at FROM teams WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("team {name:?} does not exist")))
    }

    pub async fn team_name(&self, id: Uuid) -> Result<String> {
        sqlx::query_scalar("SELECT name FROM teams WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("team {id} does not exist")))
    }

    /// Creates a human token (admin, developer or finance). Developer and finance tokens
    /// belong to a team.
    pub async fn create_token(&self, actor: &str, name: &str, role: Role, team: Option<&str>) -> Result<NewToken> {
        if role == Role::Agent {
            return Err(StoreError::Invalid("role: agent tokens are issued when a machine joins".into()));
        }
        let team_row = match team {
            Some(team) => Some(self.team_by_name(team).await?),
            None if role == Role::Admin => None,
            None => return Err(StoreError::Invalid(format!("team: a {} token needs a team", role.as_str()))),
        };
        let secret = auth::new_secret("cnp")?;
        let id = Uuid::new_v4();
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO tokens (id, digest, name, role, team_id) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(auth::digest(&secret))
            .bind(name)
            .bind(role.as_str())
            .bind(team_row.as_ref().map(|t| t.id))
            .execute(&mut *tx)
            .await?;
        let team_id = team_row.as_ref().map(|t| t.id);
        record(&mut tx, actor, "token.created", name, team_id, serde_json::json!({"role": role, "team": team})).await?;
        tx.commit().await?;
        Ok(NewToken { id, name: name.to_string(), role, team: team.map(str::to_string), token: secret })
    }

    /// A single-use token that lets one new machine's agent join.
    pub async fn create_join_token(&self, actor: &str, ttl: chrono::Duration) -> Result<String> {
        let secret = auth::new_secret("cnj")?;
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO join_tokens (digest, expires_at) VALUES ($1, now() + make_interval(secs => $2))")
            .bind(auth::digest(&secret))
            .bind(ttl.num_seconds() as f64)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            actor,
            "join_token.created",
            "join-token",
            None,
            serde_json::json!({"ttl_seconds": ttl.num_seconds()}),
        )
        .await?;
        tx.commit().await?;
        Ok(secret)
    }
}
