//! canopy-provider-openstack: OpenStack private clouds through Keystone v3 and Nova 2.1.
//!
//! A machine is a Nova server booted from one configured image, on one configured network (or
//! Nova's `auto` network), with the Canopy tags as server metadata (Nova metadata keys allow
//! `:`, so `canopy:cluster` is stored as is). Flavors are the offerings, priced as owned
//! capacity (`sunk`) at the amortized reference rates in `core/data/prices/onprem_reference.csv`.
//!
//! Decisions worth knowing:
//! * **Client.** A small typed client on `reqwest` (`client.rs`), not `openstack_sdk` 0.22. The
//!   SDK did build here, but `cargo check` of this crate with it locked 94 more packages
//!   (+1,350 lines of Cargo.lock, among them an interactive-prompt crate, a browser opener and
//!   a WebSSO callback host, for auth methods a daemon never uses) and took 47 s on a warm
//!   target before any code generation for its 68,000 lines of generated compute bindings. Its
//!   error type keeps the status and message but drops the response headers (no `Retry-After`
//!   for throttling), and it caches tokens on disk unless told not to. We make eight calls: a
//!   typed client is cheaper to build and clearer to read.
//! * **Idempotency.** Nova has no client token, so create first looks for a live server whose
//!   metadata carries the same `canopy:machine` key. Nova ignores unknown list filters for
//!   non-admin users (it would not filter by metadata and would not say so), so the look-up
//!   pages through `/servers/detail` and filters here: cost grows with the servers in the
//!   project, which should be one dedicated to Canopy.
//! * **Capacity.** Real Nova accepts a create (202) and its scheduler later puts the server in
//!   ERROR with the fault "No valid host was found". So create waits, for at most
//!   `OpenStackConfig::schedule_wait`, while the server is in task state `scheduling`; if it
//!   leaves it in ERROR for lack of a host, the server is deleted (it would hold quota) and
//!   create returns `InsufficientCapacity` naming the flavor. After the scheduler has placed it,
//!   create returns a `Pending` machine at once: booting is not waited for.
//! * **Status.** BUILD is `Pending`, ACTIVE `Running`, ERROR `Terminated` with
//!   `Interruption::Failed(fault message)`. An ERROR server still counts against the quota
//!   until it is deleted: call `terminate` on it. SHUTOFF, SUSPENDED, PAUSED and SHELVED are
//!   `Stopped`.
//! * **Errors.** 401 `Auth` (after one fresh token), 403 "Quota exceeded" `QuotaExceeded`
//!   (other 403s `Auth`), 404 `NotFound`, 413/429/503 `Throttled` (honouring `Retry-After`),
//!   400/409 `InvalidRequest`.
//!
//! What it deliberately is not: no Glance, Neutron or Cinder calls (the image and network are
//! configured ids), no spot (`spot: true` is refused), one region per provider value.
//!
//! Operator configuration (`canopy serve` maps these to `OpenStackConfig`; see
//! api/src/cli/providers.rs): the usual openrc variables `OS_AUTH_URL` (turns the provider
//! on), `OS_REGION_NAME`, and either `OS_APPLICATION_CREDENTIAL_ID` + `_SECRET` (preferred:
//! revocable, project-bound) or `OS_USERNAME`, `OS_PASSWORD`, `OS_PROJECT_NAME`,
//! `OS_USER_DOMAIN_NAME`, `OS_PROJECT_DOMAIN_NAME`; plus `CANOPY_OPENSTACK_IMAGE` (image id)
//! and `CANOPY_OPENSTACK_NETWORK` (network id; unset: Nova's `auto`).

mod client;
mod server;

pub use client::{Credentials, MICROVERSION};
pub use server::Quota;

use async_trait::async_trait;
use canopy_core::Resources;
use canopy_core::schedule::{Offering, OwnedRates};
use canopy_providers::{CreateMachine, Provider, ProviderError, ProviderMachine, Result, TAG_CLUSTER, TAG_MACHINE};
use client::Client;
use reqwest::Method;
use serde_json::{Value, json};
use server::{Flavor, Server};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The reference rates owned capacity is priced at (see core/data/README.md).
const OWNED_RATES: &str = include_str!("../../../core/data/prices/onprem_reference.csv");
/// Servers per page when listing.
const PAGE: usize = 200;
const MIB: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct OpenStackConfig {
    /// Keystone v3, with or without the trailing `/v3`.
    pub auth_url: String,
    pub credentials: Credentials,
    pub region: String,
    /// The image id servers boot from.
    pub image: String,
    /// The network id servers attach to; `None` lets Nova pick (`networks: "auto"`).
    pub network: Option<String>,
    /// Overrides the compute endpoint from the token's catalog (a proxy, a tunnel).
    pub compute_url: Option<String>,
    /// How long create waits for the scheduler to place a server (see the crate docs).
    pub schedule_wait: Duration,
}

impl OpenStackConfig {
    /// A config with the defaults for everything but what has none.
    pub fn new(auth_url: &str, credentials: Credentials, region: &str, image: &str) -> OpenStackConfig {
        OpenStackConfig {
            auth_url: auth_url.to_string(),
            credentials,
            region: region.to_string(),
            image: image.to_string(),
            network: None,
            compute_url: None,
            schedule_wait: Duration::from_secs(30),
        }
    }
}

pub struct OpenStackProvider {
    client: Client,
    config: OpenStackConfig,
    flavors: OnceCell<Vec<Flavor>>,
    offerings: OnceCell<Vec<Offering>>,
}

impl OpenStackProvider {
    /// Authenticates and checks that Nova speaks the microversion used (`Auth` when the
    /// credentials are refused).
    pub async fn new(config: OpenStackConfig) -> Result<OpenStackProvider> {
        let client =
            Client::new(&config.auth_url, config.credentials.clone(), &config.region, config.compute_url.clone())?;
        client.connect().await?;
        Ok(OpenStackProvider { client, config, flavors: OnceCell::new(), offerings: OnceCell::new() })
    }

    /// The project's compute limits and usage (`/limits`).
    pub async fn limits(&self) -> Result<Quota> {
        let body = self.client.nova(Method::GET, "/limits", &[], None).await?;
        Quota::from_limits(&body)
    }

    async fn flavors(&self) -> Result<&Vec<Flavor>> {
        self.flavors
            .get_or_try_init(|| async {
                let body = self.client.nova(Method::GET, "/flavors/detail", &[], None).await?;
                server::parse(&body, "/flavors", "flavors")
            })
            .await
    }

    async fn load_offerings(&self) -> Result<Vec<Offering>> {
        let rates =
            OwnedRates::from_csv(OWNED_RATES).map_err(|e| ProviderError::Other(format!("owned price rates: {e}")))?;
        let zones = self.client.nova(Method::GET, "/os-availability-zone", &[], None).await?;
        let zones: Vec<String> = zones
            .get("availabilityZoneInfo")
            .and_then(Value::as_array)
            .map(|zones| {
                zones
                    .iter()
                    .filter(|z| z.pointer("/zoneState/available").and_then(Value::as_bool).unwrap_or(true))
                    .filter_map(|z| z.get("zoneName").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let offerings = self
            .flavors()
            .await?
            .iter()
            .filter(|f| f.vcpus > 0 && f.ram > 0)
            .map(|f| {
                let capacity = Resources { milli_cpu: f.vcpus * 1000, memory_bytes: f.ram * MIB };
                Offering {
                    zones: zones.clone(),
                    ..rates.offering("openstack", &self.config.region, &f.name, capacity, 0)
                }
            })
            .collect();
        Ok(offerings)
    }

    fn check_region(&self, region: &str) -> Result<()> {
        if region == self.config.region {
            Ok(())
        } else {
            Err(ProviderError::InvalidRequest(format!(
                "region {region} is not configured (this provider serves {})",
                self.config.region
            )))
        }
    }

    /// Every server in the project, page by page (marker = the last id seen).
    async fn all_servers(&self) -> Result<Vec<Server>> {
        let mut servers = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut query = vec![("limit", PAGE.to_string())];
            if let Some(marker) = &marker {
                query.push(("marker", marker.clone()));
            }
            let body = self.client.nova(Method::GET, "/servers/detail", &query, None).await?;
            let page: Vec<Server> = server::parse(&body, "/servers/detail", "servers")?;
            let full = page.len() == PAGE && body.get("servers_links").is_some();
            marker = page.last().map(|s| s.id.clone());
            servers.extend(page);
            if !full || marker.is_none() {
                return Ok(servers);
            }
        }
    }

    async fn get(&self, id: &str) -> Result<Server> {
        let body = self.client.nova(Method::GET, &format!("/servers/{id}"), &[], None).await?;
        server::parse(&body, "/servers/{id}", "server")
    }

    async fn machine(&self, server: Server) -> Result<ProviderMachine> {
        let flavors = self.flavors().await?;
        Ok(server.into_machine(&self.config.region, flavors))
    }

    /// Our live server created with this idempotency key, if any.
    async fn find_by_key(&self, key: &str) -> Result<Option<Server>> {
        Ok(self
            .all_servers()
            .await?
            .into_iter()
            .find(|s| s.metadata.get(TAG_MACHINE).map(String::as_str) == Some(key) && s.is_live()))
    }

    /// Waits while the scheduler places the server; the server as it then is.
    async fn wait_scheduled(&self, id: &str) -> Result<Server> {
        let deadline = tokio::time::Instant::now() + self.config.schedule_wait;
        let mut pause = Duration::from_millis(50);
        loop {
            let server = self.get(id).await?;
            if !server.is_scheduling() || tokio::time::Instant::now() + pause > deadline {
                return Ok(server);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

fn create_body(config: &OpenStackConfig, request: &CreateMachine, flavor_id: &str) -> Result<Value> {
    for (key, value) in &request.tags {
        let key_ok = !key.is_empty()
            && key.len() <= 255
            && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_:. ".contains(c));
        if !key_ok || value.chars().count() > 255 {
            return Err(ProviderError::InvalidRequest(format!(
                "tag {key:?}: nova metadata keys are 1-255 of [a-zA-Z0-9-_:. ] and values at most 255 characters"
            )));
        }
    }
    use base64::Engine;
    let networks = match &config.network {
        Some(network) => json!([{"uuid": network}]),
        None => json!("auto"),
    };
    let mut server = json!({
        "name": request.name,
        "imageRef": config.image,
        "flavorRef": flavor_id,
        "networks": networks,
        "metadata": request.tags,
        "user_data": base64::engine::general_purpose::STANDARD.encode(&request.user_data),
    });
    if !request.zone.is_empty() {
        server["availability_zone"] = json!(request.zone);
    }
    Ok(json!({ "server": server }))
}

#[async_trait]
impl Provider for OpenStackProvider {
    fn name(&self) -> &str {
        "openstack"
    }

    /// The project's instance and core limits. Servers of others in the project count
    /// against them too; a create beyond what is left is refused (`QuotaExceeded`).
    async fn quota(&self) -> Result<Option<canopy_core::schedule::Quota>> {
        let limits = self.limits().await?;
        Ok(Some(canopy_core::schedule::Quota {
            max_machines: limits.max_instances.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            max_milli_cpu: limits.max_cores.map(|n| n.saturating_mul(1000)),
        }))
    }

    async fn offerings(&self) -> Result<Vec<Offering>> {
        self.offerings.get_or_try_init(|| self.load_offerings()).await.cloned()
    }

    #[tracing::instrument(skip_all, fields(key = %request.idempotency_key, instance_type = %request.instance_type, zone = %request.zone))]
    async fn create(&self, request: &CreateMachine) -> Result<ProviderMachine> {
        self.check_region(&request.region)?;
        if request.spot {
            return Err(ProviderError::InvalidRequest("openstack has no spot machines".into()));
        }
        if let Some(existing) = self.find_by_key(&request.idempotency_key).await? {
            tracing::info!(id = %existing.id, "machine already exists for this key");
            return self.machine(existing).await;
        }
        let flavor = self
            .flavors()
            .await?
            .iter()
            .find(|f| f.name == request.instance_type)
            .ok_or_else(|| ProviderError::InvalidRequest(format!("no flavor named {}", request.instance_type)))?;
        let body = create_body(&self.config, request, &flavor.id)?;
        let created = self.client.nova(Method::POST, "/servers", &[], Some(&body)).await?;
        let id = created
            .pointer("/server/id")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderError::Other("create returned no server id".into()))?
            .to_string();
        tracing::info!(id = %id, "server accepted; waiting for the scheduler");
        let server = self.wait_scheduled(&id).await?;
        if let Some(message) = server.no_valid_host() {
            tracing::warn!(id = %id, message = %message, "no host for the server; deleting it");
            if let Err(error) = self.terminate(&request.region, &id).await {
                tracing::warn!(id = %id, error = %error, "could not delete the unplaced server");
            }
            return Err(ProviderError::InsufficientCapacity {
                instance_type: request.instance_type.clone(),
                zone: request.zone.clone(),
                message,
            });
        }
        let machine = self.machine(server).await?;
        tracing::info!(id = %machine.provider_id, status = ?machine.status, "machine created");
        Ok(machine)
    }

    async fn describe(&self, region: &str, provider_id: &str) -> Result<ProviderMachine> {
        self.check_region(region)?;
        let server = self.get(provider_id).await?;
        self.machine(server).await
    }

    async fn list_ours(&self, cluster: &str) -> Result<Vec<ProviderMachine>> {
        let flavors = self.flavors().await?;
        Ok(self
            .all_servers()
            .await?
            .into_iter()
            .filter(|s| s.metadata.get(TAG_CLUSTER).map(String::as_str) == Some(cluster))
            .map(|s| s.into_machine(&self.config.region, flavors))
            .collect())
    }

    async fn terminate(&self, region: &str, provider_id: &str) -> Result<()> {
        self.check_region(region)?;
        match self.client.nova(Method::DELETE, &format!("/servers/{provider_id}"), &[], None).await {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }
}
