//! canopy-provider-azure: Azure virtual machines through Azure Resource Manager.
//!
//! Tokens come from the official `azure_identity` client-secret credential; the rest is a
//! small typed ARM client on `reqwest` ([`arm`]) for what Canopy needs: virtualMachines with
//! the `Azure-AsyncOperation` flow, instance views, resource SKUs, and the Retail Prices API
//! for the price book. The unofficial `azure_mgmt_compute` crates are deliberately not used.
//!
//! Choices worth knowing:
//! * **Idempotency.** The VM name is derived from the idempotency key ([`vm_name`]) and ARM's
//!   PUT is idempotent, so a retried create finds (GET) or re-puts the same VM.
//! * **Tags.** Azure tag names may not contain `< > % & \ ? /`; `:` is allowed, so the
//!   `canopy:cluster` and `canopy:machine` keys are used unchanged.
//! * **Create returns once the VM resource exists** (201), after one look at its long-running
//!   operation: an allocation that fails at once (the fake's capacity fault, real ARM's quick
//!   refusals) is returned as `InsufficientCapacity` and the failed VM deleted; quota and
//!   `SkuNotAvailable` come back on the PUT itself. An allocation failing later shows up in
//!   `describe` as a machine gone with `Interruption::Failed`.
//! * **Spot VMs use the `Deallocate` eviction policy**, so an eviction stays observable: a Spot
//!   VM in `PowerState/deallocated` (Canopy never deallocates) is `SpotReclaimed`. Terminating
//!   it deletes it.
//! * **TLS.** `azure_identity` refuses a non-https authority host, so the local fake speaks
//!   TLS and the test trusts its CA through [`AzureConfig::extra_root_certificate_pem`]; one
//!   reqwest client with that root serves ARM, the credential (as its azure_core transport)
//!   and the Retail Prices API.
//!
//! An operator sets (`canopy serve` maps these to `AzureConfig`; see
//! api/src/cli/providers.rs) the service principal's usual variables `AZURE_TENANT_ID`,
//! `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_SUBSCRIPTION_ID`, and
//! `CANOPY_AZURE_REGIONS` (comma-separated; turns the provider on),
//! `CANOPY_AZURE_RESOURCE_GROUP`, `CANOPY_AZURE_IMAGE` (a URN, `publisher:offer:sku:version`),
//! `CANOPY_AZURE_SUBNET_ID`, `CANOPY_AZURE_ADMIN_USERNAME`, `CANOPY_AZURE_SSH_PUBLIC_KEY`, and
//! only for the local stack `CANOPY_AZURE_ENDPOINT` (one URL for ARM, the authority and Retail
//! Prices) and `CANOPY_AZURE_CA_CERT` (a PEM file).

mod arm;
mod model;
mod prices;

use arm::{ArmClient, ArmSettings};
use async_trait::async_trait;
use base64::Engine;
use canopy_core::schedule::Offering;
use canopy_providers::{CreateMachine, Provider, ProviderError, ProviderMachine, Result, TAG_CLUSTER};
use model::{AsyncOperation, VirtualMachine};
use reqwest::Method;
use serde_json::json;
use std::fmt;
use tokio::sync::OnceCell;

const COMPUTE_API_VERSION: &str = "2024-07-01";
const RESOURCES_API_VERSION: &str = "2021-04-01";

/// Where Azure is: the public cloud by default, the local fake in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureEndpoints {
    /// Azure Resource Manager, `https://management.azure.com`.
    pub management_url: String,
    /// Entra ID, `https://login.microsoftonline.com`; must be https (azure_identity insists).
    pub authority_host: String,
    /// The Retail Prices API, `https://prices.azure.com/api/retail/prices`.
    pub retail_prices_url: String,
    /// The token scope of ARM, `https://management.azure.com/.default`.
    pub token_scope: String,
}

impl AzureEndpoints {
    pub fn public_cloud() -> AzureEndpoints {
        AzureEndpoints {
            management_url: "https://management.azure.com".into(),
            authority_host: "https://login.microsoftonline.com".into(),
            retail_prices_url: "https://prices.azure.com/api/retail/prices".into(),
            token_scope: "https://management.azure.com/.default".into(),
        }
    }

    /// Everything at one base URL, as the local fake serves it.
    pub fn local(base_url: &str) -> AzureEndpoints {
        let base = base_url.trim_end_matches('/');
        AzureEndpoints {
            management_url: base.to_string(),
            authority_host: base.to_string(),
            retail_prices_url: format!("{base}/api/retail/prices"),
            ..AzureEndpoints::public_cloud()
        }
    }
}

/// A marketplace image, `publisher:offer:sku:version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    pub publisher: String,
    pub offer: String,
    pub sku: String,
    pub version: String,
}

impl ImageReference {
    /// Parses an image URN such as `Canonical:ubuntu-24_04-lts:server:latest`.
    pub fn parse_urn(urn: &str) -> Result<ImageReference> {
        match urn.split(':').collect::<Vec<_>>()[..] {
            [publisher, offer, sku, version] if [publisher, offer, sku, version].iter().all(|p| !p.is_empty()) => {
                Ok(ImageReference {
                    publisher: publisher.into(),
                    offer: offer.into(),
                    sku: sku.into(),
                    version: version.into(),
                })
            }
            _ => Err(ProviderError::InvalidRequest(format!("image {urn:?} is not publisher:offer:sku:version"))),
        }
    }
}

#[derive(Clone)]
pub struct AzureConfig {
    pub tenant_id: String,
    pub client_id: String,
    /// Never logged; `Debug` redacts it.
    pub client_secret: String,
    pub subscription_id: String,
    /// Where Canopy's VMs live; created (in the first region) when missing.
    pub resource_group: String,
    /// Regions Canopy may buy in (`eastus`, ...); the first is the resource group's.
    pub regions: Vec<String>,
    pub image: ImageReference,
    /// The subnet the VMs' network interfaces join (`/subscriptions/.../subnets/...`).
    pub subnet_id: String,
    pub admin_username: String,
    pub ssh_public_key: String,
    pub endpoints: AzureEndpoints,
    /// An extra root certificate (PEM) to trust, for the local fake's TLS; `None` for Azure.
    pub extra_root_certificate_pem: Option<String>,
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureConfig")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("regions", &self.regions)
            .field("image", &self.image)
            .field("subnet_id", &self.subnet_id)
            .field("admin_username", &self.admin_username)
            .field("endpoints", &self.endpoints)
            .field("extra_root_certificate_pem", &self.extra_root_certificate_pem.is_some())
            .finish_non_exhaustive()
    }
}

pub struct AzureProvider {
    arm: ArmClient,
    config: AzureConfig,
    offerings: OnceCell<Vec<Offering>>,
}

impl fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureProvider").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The VM name for an idempotency key: readable, valid for Azure (letters, digits and `-`,
/// at most 64 characters) and distinct for distinct keys (a hash of the whole key).
pub fn vm_name(idempotency_key: &str) -> String {
    let mut readable: String =
        idempotency_key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    readable.truncate(40);
    let readable = readable.trim_matches('-');
    let hash = idempotency_key
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    if readable.is_empty() { format!("canopy-{hash:016x}") } else { format!("{readable}-{hash:016x}") }
}

impl AzureProvider {
    /// Connects: gets a token (a wrong secret is `Auth` here) and makes sure the resource group
    /// exists.
    pub async fn new(config: AzureConfig) -> Result<AzureProvider> {
        let region =
            config.regions.first().ok_or_else(|| ProviderError::InvalidRequest("no region configured".into()))?.clone();
        let http = arm::http_client(config.extra_root_certificate_pem.as_deref())?;
        let arm = ArmClient::new(
            &ArmSettings {
                tenant_id: &config.tenant_id,
                client_id: &config.client_id,
                client_secret: &config.client_secret,
                authority_host: &config.endpoints.authority_host,
                management_url: &config.endpoints.management_url,
                token_scope: &config.endpoints.token_scope,
            },
            http,
        )?;
        let provider = AzureProvider { arm, config, offerings: OnceCell::new() };
        provider.ensure_resource_group(&region).await?;
        Ok(provider)
    }

    fn group_path(&self) -> String {
        format!("/subscriptions/{}/resourceGroups/{}", self.config.subscription_id, self.config.resource_group)
    }

    fn vm_url(&self, name: &str) -> String {
        self.arm.url(
            &format!("{}/providers/Microsoft.Compute/virtualMachines/{name}", self.group_path()),
            COMPUTE_API_VERSION,
        )
    }

    async fn ensure_resource_group(&self, region: &str) -> Result<()> {
        let url = self.arm.url(&self.group_path(), RESOURCES_API_VERSION);
        match self.arm.send(Method::GET, &url, None).await {
            Ok(_) => Ok(()),
            Err(ProviderError::NotFound(_)) => {
                self.arm.send(Method::PUT, &url, Some(&json!({"location": region}))).await?;
                tracing::info!(resource_group = %self.config.resource_group, region, "resource group created");
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    async fn get_vm(&self, name: &str) -> Result<VirtualMachine> {
        self.arm.get(&format!("{}&$expand=instanceView", self.vm_url(name)), "virtual machine").await
    }

    fn vm_body(&self, request: &CreateMachine, name: &str) -> serde_json::Value {
        let image = &self.config.image;
        let mut properties = json!({
            "hardwareProfile": {"vmSize": request.instance_type},
            "storageProfile": {
                "imageReference": {"publisher": image.publisher, "offer": image.offer, "sku": image.sku, "version": image.version},
                "osDisk": {"createOption": "FromImage", "deleteOption": "Delete", "managedDisk": {"storageAccountType": "StandardSSD_LRS"}},
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": self.config.admin_username,
                "customData": base64::engine::general_purpose::STANDARD.encode(&request.user_data),
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{
                        "path": format!("/home/{}/.ssh/authorized_keys", self.config.admin_username),
                        "keyData": self.config.ssh_public_key,
                    }]},
                },
            },
            "networkProfile": {
                "networkApiVersion": "2020-11-01",
                "networkInterfaceConfigurations": [{
                    "name": format!("{name}-nic"),
                    "properties": {
                        "primary": true,
                        "deleteOption": "Delete",
                        "ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": self.config.subnet_id}}}],
                    },
                }],
            },
        });
        if request.spot {
            properties["priority"] = json!("Spot");
            properties["evictionPolicy"] = json!("Deallocate");
            properties["billingProfile"] = json!({"maxPrice": -1});
        }
        let mut tags = request.tags.clone();
        tags.entry("Name".into()).or_insert_with(|| request.name.clone());
        let mut body = json!({"location": request.region, "tags": tags, "properties": properties});
        if !request.zone.is_empty() {
            body["zones"] = json!([request.zone]);
        }
        body
    }

    /// The create's long-running operation, looked at once: a failure already known is
    /// returned; one still in progress is left to `describe`.
    async fn first_look(&self, operation_url: &str) -> Result<Option<ProviderError>> {
        let operation: AsyncOperation = self.arm.get(operation_url, "async operation").await?;
        Ok((operation.status == "Failed").then(|| {
            let error = operation.error.unwrap_or_default();
            arm::classify(reqwest::StatusCode::CONFLICT, &error, None)
        }))
    }
}

/// Names the request's instance type and zone in a capacity error.
fn for_request(error: ProviderError, request: &CreateMachine) -> ProviderError {
    match error {
        ProviderError::InsufficientCapacity { message, .. } => ProviderError::InsufficientCapacity {
            instance_type: request.instance_type.clone(),
            zone: request.zone.clone(),
            message,
        },
        other => other,
    }
}

#[async_trait]
impl Provider for AzureProvider {
    fn name(&self) -> &str {
        "azure"
    }

    async fn offerings(&self) -> Result<Vec<Offering>> {
        self.offerings
            .get_or_try_init(|| async {
                let mut all = Vec::new();
                for region in &self.config.regions {
                    all.extend(
                        prices::region_offerings(
                            &self.arm,
                            &self.config.subscription_id,
                            &self.config.endpoints.retail_prices_url,
                            region,
                        )
                        .await?,
                    );
                }
                Ok(all)
            })
            .await
            .cloned()
    }

    #[tracing::instrument(skip_all, fields(key = %request.idempotency_key, instance_type = %request.instance_type, zone = %request.zone))]
    async fn create(&self, request: &CreateMachine) -> Result<ProviderMachine> {
        let name = vm_name(&request.idempotency_key);
        match self.get_vm(&name).await {
            Ok(existing) => {
                tracing::info!(vm = %name, "machine already exists for this key");
                return Ok(existing.machine(&request.region));
            }
            Err(ProviderError::NotFound(_)) => {}
            Err(other) => return Err(other),
        }
        let response = self
            .arm
            .send(Method::PUT, &self.vm_url(&name), Some(&self.vm_body(request, &name)))
            .await
            .map_err(|e| for_request(e, request))?;
        let vm: VirtualMachine = response.json("virtual machine")?;
        if let Some(operation) = &response.async_operation
            && let Some(error) = self.first_look(operation).await?
        {
            tracing::info!(vm = %name, %error, "create failed; deleting the failed VM");
            if let Err(cleanup) = self.arm.send(Method::DELETE, &self.vm_url(&name), None).await {
                tracing::warn!(vm = %name, error = %cleanup, "could not delete the failed VM");
            }
            return Err(for_request(error, request));
        }
        tracing::info!(vm = %name, status = response.status.as_u16(), "machine created");
        Ok(vm.machine(&request.region))
    }

    async fn describe(&self, region: &str, provider_id: &str) -> Result<ProviderMachine> {
        Ok(self.get_vm(provider_id).await?.machine(region))
    }

    #[tracing::instrument(skip_all, fields(cluster = %cluster))]
    async fn list_ours(&self, cluster: &str) -> Result<Vec<ProviderMachine>> {
        let url = self
            .arm
            .url(&format!("{}/providers/Microsoft.Compute/virtualMachines", self.group_path()), COMPUTE_API_VERSION);
        let listed: Vec<VirtualMachine> = match self.arm.list(url, "virtual machines").await {
            Ok(listed) => listed,
            Err(ProviderError::NotFound(_)) => Vec::new(),
            Err(other) => return Err(other),
        };
        let mut machines = Vec::new();
        // The list carries no instance view; each of ours is read with it for its power state.
        for vm in listed.iter().filter(|vm| vm.tags.get(TAG_CLUSTER).map(String::as_str) == Some(cluster)) {
            match self.get_vm(&vm.name).await {
                Ok(full) => machines.push(full.machine(&vm.location)),
                Err(ProviderError::NotFound(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(machines)
    }

    #[tracing::instrument(skip_all, fields(provider_id = %provider_id))]
    async fn terminate(&self, _region: &str, provider_id: &str) -> Result<()> {
        match self.arm.send(Method::DELETE, &self.vm_url(provider_id), None).await {
            Ok(response) => {
                tracing::info!(vm = provider_id, status = response.status.as_u16(), "machine deleting");
                Ok(())
            }
            Err(ProviderError::NotFound(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_valid_and_distinct() {
        let long = "x".repeat(200);
        for key in ["create-describe", "Weird Key/with:chars", "", "---", long.as_str()] {
            let name = vm_name(key);
            assert!(name.len() <= 64, "{name}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{name}");
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
            assert_eq!(name, vm_name(key));
        }
        assert_ne!(vm_name("a/b"), vm_name("a:b"));
    }

    #[test]
    fn image_urns_parse() {
        let image = ImageReference::parse_urn("Canonical:ubuntu-24_04-lts:server:latest").expect("urn");
        assert_eq!(image.offer, "ubuntu-24_04-lts");
        assert!(ImageReference::parse_urn("Canonical:ubuntu").is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let config = AzureConfig {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: "hunter2".into(),
            subscription_id: "s".into(),
            resource_group: "rg".into(),
            regions: vec!["eastus".into()],
            image: ImageReference::parse_urn("a:b:c:d").expect("urn"),
            subnet_id: "subnet".into(),
            admin_username: "canopy".into(),
            ssh_public_key: "ssh-ed25519 AAAA".into(),
            endpoints: AzureEndpoints::public_cloud(),
            extra_root_certificate_pem: None,
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
