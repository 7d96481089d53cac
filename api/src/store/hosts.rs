//! Bare-metal hosts: what operators register (`/v1/hosts`), and the claims the bare-metal
//! provider makes on them, through the `Inventory` it is given ([`HostInventory`]).

use super::{Result, Store, StoreError, record};
use async_trait::async_trait;
use canopy_core::Resources;
use canopy_provider_baremetal::{Claim, Host, Inventory};
use canopy_providers::ProviderError;
use serde::Serialize;
use std::collections::BTreeMap;

/// A host as the API shows it: never its BMC password.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct HostRow {
    pub name: String,
    pub region: String,
    pub class: String,
    pub milli_cpu: i64,
    pub memory: i64,
    pub labels: sqlx::types::Json<BTreeMap<String, String>>,
    pub price_micros: i64,
    pub bmc_url: String,
    pub bmc_username: String,
    pub system_id: String,
    /// The machine it is powered on for, if any.
    pub claim_key: Option<String>,
    /// Why it was taken out of the pool, if it was.
    pub quarantined: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const HOST_COLUMNS: &str = "name, region, class, milli_cpu, memory, labels, price_micros, bmc_url, bmc_username, \
                            system_id, claim_key, quarantined, created_at";

/// Everything the bare-metal provider needs about one host, password included.
#[derive(sqlx::FromRow)]
struct FullHost {
    name: String,
    region: String,
    class: String,
    milli_cpu: i64,
    memory: i64,
    labels: sqlx::types::Json<BTreeMap<String, String>>,
    price_micros: i64,
    bmc_url: String,
    bmc_username: String,
    bmc_password: String,
    system_id: String,
}

impl From<FullHost> for Host {
    fn from(h: FullHost) -> Host {
        Host {
            name: h.name,
            bmc_url: h.bmc_url,
            bmc_username: h.bmc_username,
            bmc_password: h.bmc_password,
            system_id: h.system_id,
            region: h.region,
            class: h.class,
            capacity: Resources::new(h.milli_cpu.max(0) as u64, h.memory.max(0) as u64),
            labels: h.labels.0,
            price_per_hour: h.price_micros.max(0) as u64,
        }
    }
}

const FULL_COLUMNS: &str =
    "name, region, class, milli_cpu, memory, labels, price_micros, bmc_url, bmc_username, bmc_password, system_id";

impl Store {
    /// Registers a host (already validated by the caller).
    pub async fn register_host(&self, actor: &str, host: &Host) -> Result<HostRow> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO hosts (name, region, class, milli_cpu, memory, labels, price_micros, bmc_url, bmc_username,
                                bmc_password, system_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING RETURNING {HOST_COLUMNS}"
        )))
        .bind(&host.name)
        .bind(&host.region)
        .bind(&host.class)
        .bind(host.capacity.milli_cpu as i64)
        .bind(host.capacity.memory_bytes as i64)
        .bind(sqlx::types::Json(&host.labels))
        .bind(host.price_per_hour as i64)
        .bind(&host.bmc_url)
        .bind(&host.bmc_username)
        .bind(&host.bmc_password)
        .bind(&host.system_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            StoreError::Conflict(format!(
                "a host named {:?} or with system {:?} at {} is already registered",
                host.name, host.system_id, host.bmc_url
            ))
        })?;
        let detail = serde_json::json!({"region": host.region, "class": host.class, "bmc_url": host.bmc_url});
        record(&mut tx, actor, "host.registered", &host.name, None, detail).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        Ok(sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY name")))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Removes a host; one that is powered on for a machine must be drained first.
    pub async fn remove_host(&self, actor: &str, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let claim: Option<Option<String>> =
            sqlx::query_scalar("SELECT claim_key FROM hosts WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        match claim {
            None => return Err(StoreError::NotFound(format!("host {name:?} is not registered"))),
            Some(Some(key)) => {
                return Err(StoreError::Conflict(format!(
                    "host {name:?} runs machine {key}: drain it (or wait for it to go idle) before removing the host"
                )));
            }
            Some(None) => {}
        }
        sqlx::query("DELETE FROM hosts WHERE name = $1").bind(name).execute(&mut *tx).await?;
        record(&mut tx, actor, "host.removed", name, None, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Puts a quarantined host back into the pool.
    pub async fn restore_host(&self, actor: &str, name: &str) -> Result<HostRow> {
        let mut tx = self.begin().await?;
        let row = sqlx::query_as::<_, HostRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE hosts SET quarantined = NULL WHERE name = $1 RETURNING {HOST_COLUMNS}"
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("host {name:?} is not registered")))?;
        record(&mut tx, actor, "host.restored", name, None, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(row)
    }
}

/// The bare-metal provider's view of the registered hosts, on Postgres.
pub struct HostInventory {
    store: Store,
}

impl HostInventory {
    pub fn new(store: Store) -> HostInventory {
        HostInventory { store }
    }
}

fn provider_error(error: impl std::fmt::Display) -> ProviderError {
    ProviderError::Other(format!("host inventory: {error}"))
}

#[async_trait]
impl Inventory for HostInventory {
    async fn hosts(&self) -> canopy_providers::Result<Vec<Host>> {
        let rows = sqlx::query_as::<_, FullHost>(sqlx::AssertSqlSafe(format!(
            "SELECT {FULL_COLUMNS} FROM hosts ORDER BY created_at, name"
        )))
        .fetch_all(&self.store.pool)
        .await
        .map_err(provider_error)?;
        Ok(rows.into_iter().map(Host::from).collect())
    }

    async fn claim(
        &self,
        key: &str,
        region: &str,
        class: &str,
        tags: &BTreeMap<String, String>,
    ) -> canopy_providers::Result<Option<Host>> {
        let mut tx = self.store.begin().await.map_err(provider_error)?;
        let existing = sqlx::query_as::<_, FullHost>(sqlx::AssertSqlSafe(format!(
            "SELECT {FULL_COLUMNS} FROM hosts WHERE claim_key = $1"
        )))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(provider_error)?;
        if let Some(host) = existing {
            return Ok(Some(host.into()));
        }
        let claimed = sqlx::query_as::<_, FullHost>(sqlx::AssertSqlSafe(format!(
            "UPDATE hosts SET claim_key = $1, claim_tags = $2, claim_seen_on = false
             WHERE name = (SELECT name FROM hosts
                           WHERE region = $3 AND class = $4 AND claim_key IS NULL AND quarantined IS NULL
                           ORDER BY created_at, name LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING {FULL_COLUMNS}"
        )))
        .bind(key)
        .bind(sqlx::types::Json(tags))
        .bind(region)
        .bind(class)
        .fetch_optional(&mut *tx)
        .await
        .map_err(provider_error)?;
        if let Some(host) = &claimed {
            record(&mut tx, "provisioner", "host.claimed", &host.name, None, serde_json::json!({"machine": key}))
                .await
                .map_err(provider_error)?;
        }
        tx.commit().await.map_err(provider_error)?;
        Ok(claimed.map(Host::from))
    }

    async fn claims(&self) -> canopy_providers::Result<Vec<Claim>> {
        let rows: Vec<(String, String, sqlx::types::Json<BTreeMap<String, String>>, bool)> = sqlx::query_as(
            "SELECT name, claim_key, claim_tags, claim_seen_on FROM hosts WHERE claim_key IS NOT NULL ORDER BY name",
        )
        .fetch_all(&self.store.pool)
        .await
        .map_err(provider_error)?;
        Ok(rows.into_iter().map(|(host, key, tags, seen_on)| Claim { host, key, tags: tags.0, seen_on }).collect())
    }

    async fn mark_seen_on(&self, host: &str) -> canopy_providers::Result<()> {
        sqlx::query("UPDATE hosts SET claim_seen_on = true WHERE name = $1 AND claim_key IS NOT NULL")
            .bind(host)
            .execute(&self.store.pool)
            .await
            .map_err(provider_error)?;
        Ok(())
    }

    async fn quarantine(&self, host: &str, reason: &str) -> canopy_providers::Result<()> {
        let mut tx = self.store.begin().await.map_err(provider_error)?;
        let changed = sqlx::query("UPDATE hosts SET quarantined = $2 WHERE name = $1 AND quarantined IS NULL")
            .bind(host)
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(provider_error)?
            .rows_affected();
        if changed > 0 {
            record(&mut tx, "provisioner", "host.quarantined", host, None, serde_json::json!({"reason": reason}))
                .await
                .map_err(provider_error)?;
        }
        tx.commit().await.map_err(provider_error)
    }

    async fn release(&self, host: &str) -> canopy_providers::Result<()> {
        let mut tx = self.store.begin().await.map_err(provider_error)?;
        let released: Option<String> = sqlx::query_scalar(
            "UPDATE hosts h SET claim_key = NULL, claim_tags = '{}', claim_seen_on = false
             FROM (SELECT name, claim_key FROM hosts WHERE name = $1 FOR UPDATE) old
             WHERE h.name = old.name AND old.claim_key IS NOT NULL RETURNING old.claim_key",
        )
        .bind(host)
        .fetch_optional(&mut *tx)
        .await
        .map_err(provider_error)?;
        if let Some(key) = released {
            record(&mut tx, "provisioner", "host.released", host, None, serde_json::json!({"machine": key}))
                .await
                .map_err(provider_error)?;
        }
        tx.commit().await.map_err(provider_error)
    }
}
