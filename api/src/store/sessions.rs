//! Web UI sessions: opened by signing in with an API token, closed by signing out, by
//! expiry, or by revoking the token.

use super::{Result, Store, StoreError, record};
use crate::auth::{self, Caller, Role};
use uuid::Uuid;

/// A session just opened: the cookie secret (returned once, stored as a digest) and the CSRF
/// token its forms carry.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub secret: String,
    pub csrf: String,
}

/// A live session: who it is and the CSRF token its forms must carry.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub caller: Caller,
    /// The name of the caller's team (none for admins).
    pub team: Option<String>,
    pub csrf: String,
}

#[derive(sqlx::FromRow)]
struct SessionCaller {
    id: Uuid,
    name: String,
    role: String,
    team_id: Option<Uuid>,
    machine_id: Option<Uuid>,
    team: Option<String>,
    csrf: String,
}

impl Store {
    /// Opens a session for `caller` (already authenticated by its token) that lasts `ttl`.
    /// Expired sessions are swept in the same transaction.
    pub async fn open_session(&self, caller: &Caller, ttl: chrono::Duration) -> Result<NewSession> {
        if caller.role == Role::Agent {
            return Err(StoreError::Unauthorized("token: agent tokens cannot sign in".into()));
        }
        let secret = auth::new_secret("cns")?;
        let csrf = auth::new_secret("csrf")?;
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at < now()").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO ui_sessions (digest, token_id, csrf, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        )
        .bind(auth::digest(&secret))
        .bind(caller.token_id)
        .bind(&csrf)
        .bind(ttl.num_seconds() as f64)
        .execute(&mut *tx)
        .await?;
        record(&mut tx, &caller.actor(), "ui.signed_in", &caller.name, caller.team_id, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(NewSession { secret, csrf })
    }

    /// The live session whose cookie secret is `secret`, if any: not expired, and its token
    /// not revoked.
    pub async fn session(&self, secret: &str) -> Result<Option<SessionRow>> {
        let row = sqlx::query_as::<_, SessionCaller>(
            "SELECT t.id, t.name, t.role, t.team_id, t.machine_id, e.name AS team, s.csrf
             FROM ui_sessions s JOIN tokens t ON t.id = s.token_id LEFT JOIN teams e ON e.id = t.team_id
             WHERE s.digest = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
        )
        .bind(auth::digest(secret))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let role = Role::parse(&row.role)
                .ok_or_else(|| StoreError::Corrupt(format!("token {} has role {:?}", row.id, row.role)))?;
            let caller =
                Caller { token_id: row.id, name: row.name, role, team_id: row.team_id, machine_id: row.machine_id };
            Ok(SessionRow { caller, team: row.team, csrf: row.csrf })
        })
        .transpose()
    }

    /// Ends the session whose cookie secret is `secret` (nothing happens for an unknown one).
    pub async fn close_session(&self, secret: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let closed: Option<Uuid> = sqlx::query_scalar("DELETE FROM ui_sessions WHERE digest = $1 RETURNING token_id")
            .bind(auth::digest(secret))
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(token_id) = closed {
            let (name, role, team): (String, String, Option<Uuid>) =
                sqlx::query_as("SELECT name, role, team_id FROM tokens WHERE id = $1")
                    .bind(token_id)
                    .fetch_one(&mut *tx)
                    .await?;
            record(&mut tx, &format!("{role}:{name}"), "ui.signed_out", &name, team, serde_json::json!({})).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
