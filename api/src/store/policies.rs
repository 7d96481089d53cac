//! Portability policies: versioned documents. Every apply whose document differs from the
//! current version adds a version (an identical one changes nothing), with its audit event in
//! the same transaction. Who may write: admins any policy; a developer only a policy scoped to
//! their own team that no admin owns, so a team can add rules for itself but never loosen
//! what the organisation set.

use super::{Result, Store, StoreError, record};
use canopy_core::policy::{PolicyDocument, Scope};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who writes a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Author {
    Admin,
    /// A developer of this team.
    Team(Uuid),
}

/// Who reads policies: admins every one; a team the organisation's, the label-scoped ones
/// (they may apply to its workloads) and its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reader {
    Admin,
    Team(String),
}

impl Reader {
    fn sees(&self, document: &PolicyDocument) -> bool {
        match (self, &document.scope) {
            (Reader::Admin, _) | (_, Scope::Org) | (_, Scope::Labels(_)) => true,
            (Reader::Team(mine), Scope::Team(team)) => mine == team,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRow {
    pub name: String,
    pub version: i32,
    /// The team whose developers may change it; `None`: admins only.
    pub owner_team: Option<String>,
    pub document: PolicyDocument,
    /// Who wrote this version, and when.
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

/// The answer to an apply: the current version, and whether this apply created it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedPolicy {
    #[serde(flatten)]
    pub policy: PolicyRow,
    pub changed: bool,
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    version: i32,
    owner_team: Option<String>,
    document: serde_json::Value,
    actor: String,
    created_at: DateTime<Utc>,
}

impl Row {
    fn parse(self) -> Result<PolicyRow> {
        let document = serde_json::from_value(self.document)
            .map_err(|e| StoreError::Corrupt(format!("policy {} version {}: {e}", self.name, self.version)))?;
        Ok(PolicyRow {
            name: self.name,
            version: self.version,
            owner_team: self.owner_team,
            document,
            actor: self.actor,
            created_at: self.created_at,
        })
    }
}

const SELECT: &str = "SELECT p.name, v.version, t.name AS owner_team, v.document, v.actor, v.created_at
    FROM policies p JOIN policy_versions v ON v.name = p.name LEFT JOIN teams t ON t.id = p.owner_team";

impl Store {
    /// Stores `document` as the policy's next version unless it is the current one.
    pub async fn apply_policy(&self, actor: &str, author: Author, document: &PolicyDocument) -> Result<AppliedPolicy> {
        let json = serde_json::to_value(document).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.begin().await?;
        let scope_team: Option<Uuid> = match &document.scope {
            Scope::Team(team) => Some(
                sqlx::query_scalar("SELECT id FROM teams WHERE name = $1")
                    .bind(team)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::Invalid(format!("scope.team: there is no team {team:?}")))?,
            ),
            _ => None,
        };
        if let Author::Team(team) = author
            && scope_team != Some(team)
        {
            return Err(StoreError::Forbidden(
                "scope: a developer may only write policies scoped to their own team (scope = { team = \"...\" })"
                    .into(),
            ));
        }
        let current: Option<(i32, Option<Uuid>, serde_json::Value)> = sqlx::query_as(
            "SELECT p.version, p.owner_team, v.document FROM policies p
             JOIN policy_versions v ON v.name = p.name AND v.version = p.version WHERE p.name = $1 FOR UPDATE OF p",
        )
        .bind(&document.name)
        .fetch_optional(&mut *tx)
        .await?;
        if let (Author::Team(team), Some((_, owner, _))) = (author, &current)
            && *owner != Some(team)
        {
            return Err(StoreError::Forbidden(format!(
                "name: policy {:?} belongs to {}; a developer may only change their own team's policies",
                document.name,
                if owner.is_none() { "the organisation's admins" } else { "another team" }
            )));
        }
        let owner = match author {
            Author::Admin => None,
            Author::Team(team) => Some(team),
        };
        let version = match current {
            Some((version, _, stored)) if stored == json => {
                tx.commit().await?;
                let policy = self.policy(&Reader::Admin, &document.name, Some(version)).await?;
                return Ok(AppliedPolicy { policy, changed: false });
            }
            Some((version, _, _)) => {
                // An admin taking over a team's policy makes it the organisation's.
                sqlx::query("UPDATE policies SET version = $2, owner_team = $3, updated_at = now() WHERE name = $1")
                    .bind(&document.name)
                    .bind(version + 1)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
                version + 1
            }
            None => {
                sqlx::query("INSERT INTO policies (name, version, owner_team) VALUES ($1, 1, $2)")
                    .bind(&document.name)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?;
                1
            }
        };
        sqlx::query("INSERT INTO policy_versions (name, version, document, actor) VALUES ($1, $2, $3, $4)")
            .bind(&document.name)
            .bind(version)
            .bind(&json)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
        let detail = serde_json::json!({"version": version, "document": json});
        record(&mut tx, actor, "policy.applied", &document.name, scope_team, detail).await?;
        tx.commit().await?;
        let policy = self.policy(&Reader::Admin, &document.name, Some(version)).await?;
        Ok(AppliedPolicy { policy, changed: true })
    }

    /// How many policy versions exist: it grows with every change to any policy.
    pub async fn policy_generation(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM policy_versions").fetch_one(&self.pool).await?)
    }

    /// The current version of every policy `reader` may see, by name.
    pub async fn policies(&self, reader: &Reader) -> Result<Vec<PolicyRow>> {
        let sql = format!("{SELECT} WHERE v.version = p.version ORDER BY p.name");
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        let rows = rows.into_iter().map(Row::parse).collect::<Result<Vec<_>>>()?;
        Ok(rows.into_iter().filter(|row| reader.sees(&row.document)).collect())
    }

    /// One version of a policy (default the current one). A policy `reader` may not see is
    /// "not found", as another team's app is.
    pub async fn policy(&self, reader: &Reader, name: &str, version: Option<i32>) -> Result<PolicyRow> {
        let sql = format!("{SELECT} WHERE p.name = $1 AND v.version = COALESCE($2, p.version)");
        let row: Option<Row> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(name).bind(version).fetch_optional(&self.pool).await?;
        let current = self.policy_current_scope(name).await?;
        match (row, current) {
            (Some(row), Some(current)) if reader.sees(&current) => row.parse(),
            (None, Some(current)) if reader.sees(&current) => Err(StoreError::NotFound(format!(
                "policy {name:?} has no version {}",
                version.map_or_else(String::new, |v| v.to_string())
            ))),
            _ => Err(StoreError::NotFound(format!("policy {name:?} does not exist"))),
        }
    }

    /// Every version of a policy, newest first.
    pub async fn policy_versions(&self, reader: &Reader, name: &str) -> Result<Vec<PolicyRow>> {
        match self.policy_current_scope(name).await? {
            Some(current) if reader.sees(&current) => {}
            _ => return Err(StoreError::NotFound(format!("policy {name:?} does not exist"))),
        }
        let sql = format!("{SELECT} WHERE p.name = $1 ORDER BY v.version DESC");
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(name).fetch_all(&self.pool).await?;
        rows.into_iter().map(Row::parse).collect()
    }

    /// The current document of a policy: who may see it follows its current scope.
    async fn policy_current_scope(&self, name: &str) -> Result<Option<PolicyDocument>> {
        let document: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT v.document FROM policies p JOIN policy_versions v ON v.name = p.name AND v.version = p.version
             WHERE p.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        document
            .map(|d| serde_json::from_value(d).map_err(|e| StoreError::Corrupt(format!("policy {name}: {e}"))))
            .transpose()
    }
}

/// Every policy's current document, for evaluation inside the caller's transaction.
pub(super) async fn current_documents(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
) -> Result<Vec<PolicyDocument>> {
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT p.name, v.document FROM policies p JOIN policy_versions v ON v.name = p.name AND v.version = p.version
         ORDER BY p.name",
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|(name, d)| serde_json::from_value(d).map_err(|e| StoreError::Corrupt(format!("policy {name}: {e}"))))
        .collect()
}
