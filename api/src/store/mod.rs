//! The Postgres store: the only module that writes SQL.
//!
//! Each public method is one transaction, so every state change is atomic and survives a
//! restart. Methods take plain values and return plain values; HTTP and controllers never see
//! a row type.

mod apps;
mod artifacts;
mod assessment;
pub mod autoscale;
pub mod budgets;
mod endpoints;
mod evacuations;
pub mod history;
mod hosts;
mod identity;
mod jobs;
mod machines;
pub mod metering;
mod policies;
mod provisioning;
pub mod reports;
mod sessions;
mod tasks;

pub use apps::{AppDetail, AppSummary, TaskRow};
pub use artifacts::{ArtifactRow, ArtifactUpload};
pub use assessment::{LiveSpec, PolicyInputs, Spend, TaskPlace, hours_left_in_month};
pub use endpoints::Endpoint;
pub use evacuations::{
    EvacuationPlanView, EvacuationView, PlannedMove, PlannedPurchase, PlannedRelease, ProviderRow, RemainingTask,
    UnplacedTask,
};
pub use hosts::{HostInventory, HostRow};
pub use identity::{NewToken, TeamRow};
pub use machines::{MachineRow, MachineUsage};
pub use metering::ProviderSpend;
pub use policies::{AppliedPolicy, Author, PolicyRow, Reader};
pub use provisioning::ProvisionedMachine;
pub use sessions::{NewSession, SessionRow};
pub use tasks::{LogTarget, PlacementOutcome};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// A hard policy refuses the change; the message names each policy, rule and the numbers.
    #[error("{0}")]
    PolicyRefused(String),
    #[error("no random source: {0}")]
    Random(#[from] getrandom::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Connects and applies the embedded migrations.
    pub async fn connect(database_url: &str) -> Result<Store> {
        let options = PgConnectOptions::from_str(database_url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Opens a transaction holding the controllers' advisory lock, or `None` when another
    /// replica's controller step holds it. The lock is released when the transaction ends, so a
    /// crashed leader never blocks the others.
    async fn begin_leader(&self) -> Result<Option<Transaction<'static, Postgres>>> {
        let mut tx = self.begin().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(CONTROLLER_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        Ok(got.then_some(tx))
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn events(&self, team: Option<uuid::Uuid>, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, at, actor, kind, subject, detail FROM events
             WHERE $1::uuid IS NULL OR team_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(team)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// The newest events about `subject` (an app's deploys, scalings, rollbacks, ...).
    pub async fn events_about(&self, team: Option<uuid::Uuid>, subject: &str, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT id, at, actor, kind, subject, detail FROM events
             WHERE ($1::uuid IS NULL OR team_id = $1) AND subject = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(team)
        .bind(subject)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// Key of the advisory lock that elects the replica running the controllers.
const CONTROLLER_LOCK: i64 = 0x63616e6f7079; // "canopy"

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub kind: String,
    pub subject: String,
    pub detail: serde_json::Value,
}

/// Appends to the audit log inside the caller's transaction, so the event exists iff the
/// change does.
async fn record(
    tx: &mut Transaction<'static, Postgres>,
    actor: &str,
    kind: &str,
    subject: &str,
    team: Option<uuid::Uuid>,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query("INSERT INTO events (actor, kind, subject, team_id, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(actor)
        .bind(kind)
        .bind(subject)
        .bind(team)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
