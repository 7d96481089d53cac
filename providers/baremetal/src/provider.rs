//! [`BareMetalProvider`]: the `Provider` trait over an [`Inventory`] of hosts and their BMCs.

use crate::inventory::{Claim, Host, Inventory};
use crate::redfish::{Bmc, PowerState, RedfishError, System};
use async_trait::async_trait;
use base64::Engine;
use canopy_core::Resources;
use canopy_core::schedule::Offering;
use canopy_providers::{
    CreateMachine, Interruption, MachineStatus, Provider, ProviderError, ProviderMachine, Result, TAG_CLUSTER,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The boot override the provider sets while a host is claimed: boot the virtual CD that
/// holds the bootstrap, on every boot, until terminate clears it.
const BOOT_TARGET: &str = "Cd";
const BOOT_ENABLED: &str = "Continuous";

#[derive(Clone, Debug)]
pub struct BareMetalConfig {
    /// How long terminate waits for a graceful shutdown before forcing the power off.
    pub graceful_shutdown_timeout: Duration,
    /// How long terminate then waits for the forced power-off.
    pub force_off_timeout: Duration,
    /// How often terminate polls the power state while waiting.
    pub poll_interval: Duration,
    /// Timeout of one Redfish request.
    pub request_timeout: Duration,
    /// Accept BMC certificates that do not verify (self-signed ones are the norm on BMCs).
    pub accept_invalid_bmc_certs: bool,
}

impl Default for BareMetalConfig {
    fn default() -> BareMetalConfig {
        BareMetalConfig {
            graceful_shutdown_timeout: Duration::from_secs(120),
            force_off_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            accept_invalid_bmc_certs: false,
        }
    }
}

pub struct BareMetalProvider {
    inventory: Arc<dyn Inventory>,
    http: reqwest::Client,
    config: BareMetalConfig,
}

impl BareMetalProvider {
    /// With the default configuration (certificates verified).
    pub fn new(inventory: Arc<dyn Inventory>) -> BareMetalProvider {
        let config = BareMetalConfig::default();
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        BareMetalProvider { inventory, http, config }
    }

    pub fn with_config(inventory: Arc<dyn Inventory>, config: BareMetalConfig) -> Result<BareMetalProvider> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .tls_danger_accept_invalid_certs(config.accept_invalid_bmc_certs)
            .build()
            .map_err(|e| ProviderError::Other(format!("building the BMC http client: {e}")))?;
        Ok(BareMetalProvider { inventory, http, config })
    }

    fn bmc(&self, host: &Host) -> Bmc {
        Bmc::new(self.http.clone(), &host.bmc_url, &host.bmc_username, &host.bmc_password)
    }

    async fn host(&self, name: &str) -> Result<Option<Host>> {
        Ok(self.inventory.hosts().await?.into_iter().find(|h| h.name == name))
    }

    async fn claim_of(&self, host: &str) -> Result<Option<Claim>> {
        Ok(self.inventory.claims().await?.into_iter().find(|c| c.host == host))
    }

    /// Brings a claimed host to "boots the bootstrap and is powered on". Level-triggered:
    /// each step is skipped when it already holds, so a retried create after a crash or a
    /// lost response finishes the job without redoing it.
    #[tracing::instrument(skip_all, fields(host = %host.name, system = %host.system_id))]
    async fn provision(&self, host: &Host, user_data: &str) -> Result<()> {
        let bmc = self.bmc(host);
        let system = bmc.system(&host.system_id).await?;
        let image = bootstrap_uri(user_data);
        let mut changed = false;
        let cd = bmc.virtual_cd(&system).await?;
        if !cd.holds(&image) {
            if !cd.is_empty() {
                bmc.eject_media(&cd).await?;
            }
            bmc.insert_media(&cd, &image).await?;
            tracing::info!("bootstrap inserted as virtual media");
            changed = true;
        }
        let boot = &system.boot;
        if boot.boot_source_override_target.as_deref() != Some(BOOT_TARGET)
            || boot.boot_source_override_enabled.as_deref() != Some(BOOT_ENABLED)
        {
            bmc.set_boot_override(&system, BOOT_TARGET, BOOT_ENABLED).await?;
            changed = true;
        }
        match system.power() {
            PowerState::On | PowerState::PoweringOn if changed => {
                // It was on before it was ours (or before the bootstrap was in place): restart
                // it so that it boots the bootstrap.
                bmc.reset(&system, "ForceRestart").await?;
                tracing::info!("host was on: restarted into the bootstrap");
            }
            PowerState::On | PowerState::PoweringOn => {}
            _ => {
                bmc.reset(&system, "On").await?;
                tracing::info!("power on requested");
            }
        }
        Ok(())
    }

    /// What the BMC says about a claimed host, as a machine.
    async fn observe(&self, host: &Host, claim: &Claim) -> Result<ProviderMachine> {
        let system = self.bmc(host).system(&host.system_id).await?;
        let mut interruption = None;
        let status = if system.is_critical() {
            interruption = Some(Interruption::Failed(format!("bmc reports host {} health Critical", host.name)));
            if system.power() == PowerState::Off { MachineStatus::Stopped } else { MachineStatus::Stopping }
        } else {
            match system.power() {
                PowerState::On => {
                    if !claim.seen_on {
                        self.inventory.mark_seen_on(&host.name).await?;
                    }
                    MachineStatus::Running
                }
                PowerState::Off | PowerState::PoweringOff if claim.seen_on => {
                    interruption =
                        Some(Interruption::Failed(format!("host {} powered off without Canopy asking", host.name)));
                    if system.power() == PowerState::Off { MachineStatus::Stopped } else { MachineStatus::Stopping }
                }
                // Not on yet: the power-on we asked for has not landed.
                _ => MachineStatus::Pending,
            }
        };
        Ok(ProviderMachine {
            provider_id: host.name.clone(),
            region: host.region.clone(),
            zone: String::new(),
            instance_type: host.class.clone(),
            status,
            spot: false,
            interruption,
            tags: claim.tags.clone(),
            private_ip: None,
        })
    }

    /// Powers the host off: gracefully, then by force when the graceful shutdown is refused
    /// or does not finish in time. Returns once the BMC reports it off.
    async fn power_off(&self, bmc: &Bmc, host: &Host, system: &System) -> Result<()> {
        if system.power() == PowerState::Off {
            return Ok(());
        }
        let graceful = system.allows_reset("GracefulShutdown")
            && match bmc.reset(system, "GracefulShutdown").await {
                Ok(()) => true,
                Err(RedfishError::Status { status, .. }) if (400..500).contains(&status) => false,
                Err(other) => return Err(other.into()),
            };
        if graceful && self.wait_off(bmc, host, self.config.graceful_shutdown_timeout).await? {
            return Ok(());
        }
        tracing::warn!(graceful, "forcing the power off");
        bmc.reset(system, "ForceOff").await?;
        if self.wait_off(bmc, host, self.config.force_off_timeout).await? {
            return Ok(());
        }
        Err(ProviderError::Other(format!("host {} did not power off", host.name)))
    }

    async fn wait_off(&self, bmc: &Bmc, host: &Host, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if bmc.system(&host.system_id).await?.power() == PowerState::Off {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

#[async_trait]
impl Provider for BareMetalProvider {
    fn name(&self) -> &str {
        "baremetal"
    }

    /// The classes that still have a host no machine holds (hosts are registered, claimed
    /// and released while the service runs: see `dynamic_offerings`).
    async fn offerings(&self) -> Result<Vec<Offering>> {
        let claimed: Vec<String> = self.inventory.claims().await?.into_iter().map(|c| c.host).collect();
        let mut hosts = self.inventory.hosts().await?;
        hosts.retain(|h| !claimed.contains(&h.name));
        Ok(offerings(&hosts))
    }

    fn dynamic_offerings(&self) -> bool {
        true
    }

    /// One machine per registered host, so one plan never asks for more hosts than exist.
    async fn quota(&self) -> Result<Option<canopy_core::schedule::Quota>> {
        let hosts = self.inventory.hosts().await?.len();
        Ok(Some(canopy_core::schedule::Quota {
            max_machines: Some(u32::try_from(hosts).unwrap_or(u32::MAX)),
            max_milli_cpu: None,
        }))
    }

    #[tracing::instrument(skip_all, fields(key = %request.idempotency_key, class = %request.instance_type, region = %request.region))]
    async fn create(&self, request: &CreateMachine) -> Result<ProviderMachine> {
        if request.spot {
            return Err(ProviderError::InvalidRequest("bare-metal hosts are never spot".into()));
        }
        let no_capacity = |message: String| ProviderError::InsufficientCapacity {
            instance_type: request.instance_type.clone(),
            zone: request.zone.clone(),
            message,
        };
        let claimed = self
            .inventory
            .claim(&request.idempotency_key, &request.region, &request.instance_type, &request.tags)
            .await?;
        let Some(host) = claimed else {
            let known = self
                .inventory
                .hosts()
                .await?
                .iter()
                .any(|h| h.region == request.region && h.class == request.instance_type);
            return Err(no_capacity(if known {
                format!("every {} host in {} is claimed or quarantined", request.instance_type, request.region)
            } else {
                format!("no {} host is registered in {}", request.instance_type, request.region)
            }));
        };
        let claim = self
            .claim_of(&host.name)
            .await?
            .ok_or_else(|| ProviderError::Other(format!("host {} was claimed but has no claim", host.name)))?;
        tracing::info!(host = %host.name, "host claimed");
        // A host that already ran for this key is not provisioned again: if it went off
        // since, that is a failure describe reports, not something to paper over.
        if !claim.seen_on
            && let Err(error) = self.provision(&host, &request.user_data).await
        {
            if matches!(error, ProviderError::Auth(_) | ProviderError::NotFound(_) | ProviderError::InvalidRequest(_)) {
                // The host cannot be provisioned as registered: retrying will not help, so
                // give it back rather than hold it for a machine that cannot exist.
                tracing::warn!(host = %host.name, %error, "provisioning refused; releasing the host");
                self.inventory.release(&host.name).await?;
            }
            return Err(error);
        }
        self.observe(&host, &claim).await
    }

    async fn describe(&self, _region: &str, provider_id: &str) -> Result<ProviderMachine> {
        let host =
            self.host(provider_id).await?.ok_or_else(|| ProviderError::NotFound(format!("host {provider_id}")))?;
        let claim = self
            .claim_of(provider_id)
            .await?
            .ok_or_else(|| ProviderError::NotFound(format!("host {provider_id} is not claimed")))?;
        self.observe(&host, &claim).await
    }

    async fn list_ours(&self, cluster: &str) -> Result<Vec<ProviderMachine>> {
        let hosts = self.inventory.hosts().await?;
        let mut machines = Vec::new();
        for claim in self.inventory.claims().await? {
            if claim.tags.get(TAG_CLUSTER).map(String::as_str) != Some(cluster) {
                continue;
            }
            let Some(host) = hosts.iter().find(|h| h.name == claim.host) else {
                tracing::warn!(host = %claim.host, "claimed host is no longer registered");
                continue;
            };
            machines.push(self.observe(host, &claim).await?);
        }
        Ok(machines)
    }

    #[tracing::instrument(skip_all, fields(host = %provider_id))]
    async fn terminate(&self, _region: &str, provider_id: &str) -> Result<()> {
        let (Some(host), Some(claim)) = (self.host(provider_id).await?, self.claim_of(provider_id).await?) else {
            return Ok(());
        };
        let bmc = self.bmc(&host);
        let system = match bmc.system(&host.system_id).await {
            Ok(system) => system,
            Err(RedfishError::NotFound { url }) => {
                // The BMC does not know the system: the registration is wrong. Nothing can be
                // powered off; keep the host out of the pool until an operator looks.
                let reason = format!("bmc has no system {url}");
                self.inventory.quarantine(&host.name, &reason).await?;
                return self.inventory.release(&host.name).await;
            }
            Err(other) => return Err(other.into()),
        };
        // Judged before Canopy powers it off itself.
        let failure = if system.is_critical() {
            Some("bmc reported health Critical".to_string())
        } else if claim.seen_on && system.power() == PowerState::Off {
            Some("powered off without Canopy asking".to_string())
        } else {
            None
        };
        self.power_off(&bmc, &host, &system).await?;
        match bmc.virtual_cd(&system).await {
            Ok(cd) if !cd.is_empty() => bmc.eject_media(&cd).await?,
            Ok(_) | Err(RedfishError::Unsupported { .. }) => {}
            Err(other) => return Err(other.into()),
        }
        bmc.set_boot_override(&system, "None", "Disabled").await?;
        if let Some(reason) = failure {
            tracing::warn!(%reason, "host failed: quarantined");
            self.inventory.quarantine(&host.name, &reason).await?;
        }
        self.inventory.release(&host.name).await?;
        tracing::info!("host powered off and released");
        Ok(())
    }
}

/// The bootstrap as a `data:` URI (RFC 2397), the virtual media image the BMC is given.
pub fn bootstrap_uri(user_data: &str) -> String {
    format!("data:text/x-shellscript;base64,{}", base64::engine::general_purpose::STANDARD.encode(user_data))
}

/// One offering per (region, class). Hosts of a class should be alike; where they are not,
/// the offering promises only what every one of them has (the smallest capacity, the labels
/// they share) and costs what the dearest costs.
pub fn offerings(hosts: &[Host]) -> Vec<Offering> {
    let mut classes: BTreeMap<(&str, &str), Vec<&Host>> = BTreeMap::new();
    for host in hosts {
        classes.entry((host.region.as_str(), host.class.as_str())).or_default().push(host);
    }
    classes
        .into_iter()
        .map(|((region, class), members)| {
            let capacity = members
                .iter()
                .map(|h| h.capacity)
                .reduce(|a, b| Resources::new(a.milli_cpu.min(b.milli_cpu), a.memory_bytes.min(b.memory_bytes)))
                .unwrap_or_default();
            let mut labels = members[0].labels.clone();
            labels.retain(|k, v| members.iter().all(|h| h.labels.get(k) == Some(v)));
            Offering {
                provider: "baremetal".into(),
                region: region.into(),
                zones: Vec::new(),
                instance_type: class.into(),
                capacity,
                gpus: 0,
                arch: String::new(),
                labels,
                price_on_demand: members.iter().map(|h| h.price_per_hour).max().unwrap_or(0),
                price_spot: None,
                sunk: true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, class: &str, cpus: u64, price: u64, labels: &[(&str, &str)]) -> Host {
        Host {
            name: name.into(),
            bmc_url: "http://127.0.0.1:1".into(),
            bmc_username: "admin".into(),
            bmc_password: "secret".into(),
            system_id: name.into(),
            region: "dc1".into(),
            class: class.into(),
            capacity: Resources::new(cpus * 1000, 8 << 30),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            price_per_hour: price,
        }
    }

    #[test]
    fn one_sunk_offering_per_class_promising_what_every_host_has() {
        let hosts = [
            host("a", "small", 8, 100, &[("rack", "1"), ("ssd", "yes")]),
            host("b", "small", 4, 300, &[("rack", "2"), ("ssd", "yes")]),
            host("c", "large", 64, 900, &[]),
        ];
        let offerings = offerings(&hosts);
        assert_eq!(offerings.len(), 2);
        let small = offerings.iter().find(|o| o.instance_type == "small").unwrap();
        assert_eq!(small.capacity.milli_cpu, 4000);
        assert_eq!(small.labels, BTreeMap::from([("ssd".to_string(), "yes".to_string())]));
        assert_eq!(small.price_on_demand, 300);
        assert!(small.sunk && small.price_spot.is_none() && small.provider == "baremetal");
    }

    #[test]
    fn the_bootstrap_travels_as_a_base64_data_uri() {
        assert_eq!(bootstrap_uri("#!/bin/sh\n"), "data:text/x-shellscript;base64,IyEvYmluL3NoCg==");
    }
}
