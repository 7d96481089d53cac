//! What the provider needs to know about the hosts an operator registered, and the claims
//! on them. The control service implements [`Inventory`] over its Postgres store; this
//! crate does no SQL. [`MemoryInventory`] is the in-memory implementation for tests and for
//! operators who list their hosts in a file.

use async_trait::async_trait;
use canopy_core::Resources;
use canopy_providers::{ProviderError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// One registered machine and how to reach its BMC.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Unique; also the machine's provider id.
    pub name: String,
    /// The BMC's Redfish endpoint, scheme and authority only (`https://10.0.0.5`), no
    /// credentials in it.
    pub bmc_url: String,
    pub bmc_username: String,
    /// Never logged, never in `Debug` output.
    pub bmc_password: String,
    /// The id in `/redfish/v1/Systems/<id>`.
    pub system_id: String,
    pub region: String,
    /// Hosts of one class in one region are interchangeable: they share an offering.
    pub class: String,
    pub capacity: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Amortized cost, micro-units per hour.
    pub price_per_hour: u64,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("bmc_url", &self.bmc_url)
            .field("bmc_username", &self.bmc_username)
            .field("bmc_password", &"<redacted>")
            .field("system_id", &self.system_id)
            .field("region", &self.region)
            .field("class", &self.class)
            .field("capacity", &self.capacity)
            .field("labels", &self.labels)
            .field("price_per_hour", &self.price_per_hour)
            .finish()
    }
}

/// A host handed to one machine of Canopy's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub host: String,
    /// The idempotency key of the create that claimed it.
    pub key: String,
    pub tags: BTreeMap<String, String>,
    /// The host was seen powered on since it was claimed. Before that, off means "not on
    /// yet"; after it, off without Canopy asking means the host failed.
    pub seen_on: bool,
}

#[async_trait]
pub trait Inventory: Send + Sync {
    /// Every registered host, quarantined or not.
    async fn hosts(&self) -> Result<Vec<Host>>;

    /// Atomically claims a free, unquarantined host of `class` in `region` for `key` with
    /// these tags, or returns the host already claimed for `key` (whatever its class);
    /// `None` when no host is free.
    async fn claim(
        &self,
        key: &str,
        region: &str,
        class: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Option<Host>>;

    async fn claims(&self) -> Result<Vec<Claim>>;

    /// Records on the host's claim that it was seen powered on (no-op without a claim).
    async fn mark_seen_on(&self, host: &str) -> Result<()>;

    /// Takes a host out of the pool until an operator puts it back: `claim` skips it. Used
    /// for hosts that failed; it does not release a claim.
    async fn quarantine(&self, host: &str, reason: &str) -> Result<()>;

    /// Frees the host (no-op when it is not claimed).
    async fn release(&self, host: &str) -> Result<()>;
}

#[derive(Default)]
struct State {
    hosts: Vec<Host>,
    claims: BTreeMap<String, Claim>,
    quarantined: BTreeMap<String, String>,
}

/// Hosts and claims in memory. Claims pick the first free host in registration order.
#[derive(Default)]
pub struct MemoryInventory {
    state: Mutex<State>,
}

impl MemoryInventory {
    pub fn new(hosts: Vec<Host>) -> MemoryInventory {
        MemoryInventory { state: Mutex::new(State { hosts, ..State::default() }) }
    }

    /// Hosts from a JSON list of [`Host`] objects (capacity as `{"milli_cpu", "memory_bytes"}`).
    pub fn from_json(text: &str) -> std::result::Result<MemoryInventory, serde_json::Error> {
        Ok(MemoryInventory::new(serde_json::from_str(text)?))
    }

    /// Hosts taken out of the pool, with the reason.
    pub fn quarantined(&self) -> BTreeMap<String, String> {
        self.lock().quarantined.clone()
    }

    /// Puts a quarantined host back into the pool (what an operator does after a repair).
    pub fn restore(&self, host: &str) {
        self.lock().quarantined.remove(host);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent, so a panic elsewhere while the
        // lock was held cannot have left it half-done.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Inventory for MemoryInventory {
    async fn hosts(&self) -> Result<Vec<Host>> {
        Ok(self.lock().hosts.clone())
    }

    async fn claim(
        &self,
        key: &str,
        region: &str,
        class: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Option<Host>> {
        let mut state = self.lock();
        if let Some(claim) = state.claims.values().find(|c| c.key == key) {
            let name = claim.host.clone();
            return state
                .hosts
                .iter()
                .find(|h| h.name == name)
                .cloned()
                .map(Some)
                .ok_or_else(|| ProviderError::Other(format!("claimed host {name} is no longer registered")));
        }
        let free = state
            .hosts
            .iter()
            .find(|h| {
                h.region == region
                    && h.class == class
                    && !state.claims.contains_key(&h.name)
                    && !state.quarantined.contains_key(&h.name)
            })
            .cloned();
        if let Some(host) = &free {
            let claim = Claim { host: host.name.clone(), key: key.to_string(), tags: tags.clone(), seen_on: false };
            state.claims.insert(host.name.clone(), claim);
        }
        Ok(free)
    }

    async fn claims(&self) -> Result<Vec<Claim>> {
        Ok(self.lock().claims.values().cloned().collect())
    }

    async fn mark_seen_on(&self, host: &str) -> Result<()> {
        if let Some(claim) = self.lock().claims.get_mut(host) {
            claim.seen_on = true;
        }
        Ok(())
    }

    async fn quarantine(&self, host: &str, reason: &str) -> Result<()> {
        self.lock().quarantined.insert(host.to_string(), reason.to_string());
        Ok(())
    }

    async fn release(&self, host: &str) -> Result<()> {
        self.lock().claims.remove(host);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, class: &str) -> Host {
        Host {
            name: name.into(),
            bmc_url: "http://127.0.0.1:1".into(),
            bmc_username: "admin".into(),
            bmc_password: "hunter2".into(),
            system_id: format!("{name}-id"),
            region: "dc1".into(),
            class: class.into(),
            capacity: Resources::new(4000, 8 << 30),
            labels: BTreeMap::new(),
            price_per_hour: 100_000,
        }
    }

    #[tokio::test]
    async fn claims_are_idempotent_per_key_and_skip_taken_and_quarantined_hosts() {
        let inventory = MemoryInventory::new(vec![host("a", "small"), host("b", "small"), host("c", "small")]);
        let tags = BTreeMap::new();
        let first = inventory.claim("k1", "dc1", "small", &tags).await.unwrap().unwrap();
        let again = inventory.claim("k1", "dc1", "small", &tags).await.unwrap().unwrap();
        assert_eq!((first.name.as_str(), again.name.as_str()), ("a", "a"));
        inventory.quarantine("b", "failed").await.unwrap();
        assert_eq!(inventory.claim("k2", "dc1", "small", &tags).await.unwrap().unwrap().name, "c");
        assert_eq!(inventory.claim("k3", "dc1", "small", &tags).await.unwrap(), None);
        assert_eq!(inventory.claim("k4", "dc1", "large", &tags).await.unwrap(), None);
        inventory.release("a").await.unwrap();
        assert_eq!(inventory.claim("k3", "dc1", "small", &tags).await.unwrap().unwrap().name, "a");
        inventory.mark_seen_on("a").await.unwrap();
        let claims = inventory.claims().await.unwrap();
        assert!(claims.iter().any(|c| c.host == "a" && c.key == "k3" && c.seen_on));
    }

    #[test]
    fn debug_output_never_shows_the_bmc_password() {
        let shown = format!("{:?}", host("a", "small"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn hosts_load_from_json() {
        let text = r#"[{"name": "rack1-01", "bmc_url": "https://10.0.0.5", "bmc_username": "root",
            "bmc_password": "calvin", "system_id": "System.Embedded.1", "region": "home", "class": "r640",
            "capacity": {"milli_cpu": 32000, "memory_bytes": 137438953472}, "price_per_hour": 250000}]"#;
        let inventory = MemoryInventory::from_json(text).unwrap();
        let hosts = inventory.lock().hosts.clone();
        assert_eq!(hosts[0].capacity.milli_cpu, 32000);
        assert!(hosts[0].labels.is_empty());
    }
}
