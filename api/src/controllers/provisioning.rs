//! The provisioning controller: buys the machines the placement plan asked for, waits for
//! their agents, gives back idle and broken ones, and reconciles with what each provider says
//! is ours, so a crash at any point leaves neither duplicates nor orphans.
//!
//! Order of writes around every provider call: the machine row exists ('requested') before
//! `create`, whose idempotency key is the row's id; 'booting' is written after. A crash in
//! between is repaired by `reconcile`, which adopts the tagged instance for the 'requested'
//! row. Instances tagged with our cluster that match no live row are terminated.

use crate::store::{ProvisionedMachine, Result, Store};
use canopy_core::schedule::{Catalog, DisruptionBudget, Quota, consolidate};
use canopy_providers::{CreateMachine, Interruption, Provider, ProviderError, TAG_CLUSTER, TAG_MACHINE};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How long an offering the provider had no capacity for is left out of plans.
const CAPACITY_MEMORY: Duration = Duration::from_secs(300);

/// Steps between two consolidation passes (with a 250 ms tick: every 5 s).
const CONSOLIDATE_EVERY: u64 = 20;
const CONSOLIDATION_SEED: u64 = 0xc0501;

/// How long the providers' quotas are remembered before they are asked again.
const QUOTA_MEMORY: Duration = Duration::from_secs(15);

/// Steps between two reconciliations with the providers (with a 250 ms tick: every 2 s).
const RECONCILE_EVERY: u64 = 8;

#[derive(Clone, Debug)]
pub struct ProvisioningConfig {
    /// The control service URL that new machines' agents use.
    pub control_url: String,
    /// A machine whose agent has not joined by then is terminated and replaced.
    pub boot_timeout: Duration,
    /// A bought machine without tasks for this long is drained and terminated.
    pub idle_timeout: Duration,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        ProvisioningConfig {
            control_url: "http://127.0.0.1:7070".into(),
            boot_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The providers this control service may buy from, with their offerings.
pub struct Provisioner {
    providers: HashMap<String, Arc<dyn Provider>>,
    catalog: Arc<Catalog>,
    config: ProvisioningConfig,
    cluster: String,
    steps: std::sync::atomic::AtomicU64,
    /// The providers' quotas and when they were read.
    quotas: tokio::sync::Mutex<Option<(std::time::Instant, BTreeMap<String, Quota>)>>,
}

impl Provisioner {
    /// Loads every provider's offerings into one catalog (the dynamic ones are asked again
    /// before every plan).
    pub async fn new(
        store: &Store,
        providers: Vec<Arc<dyn Provider>>,
        config: ProvisioningConfig,
    ) -> anyhow::Result<Provisioner> {
        let mut catalog = Catalog::default();
        for provider in providers.iter().filter(|p| !p.dynamic_offerings()) {
            let offerings =
                provider.offerings().await.map_err(|e| anyhow::anyhow!("{} offerings: {e}", provider.name()))?;
            tracing::info!(provider = provider.name(), offerings = offerings.len(), "catalog loaded");
            catalog.offerings.extend(offerings);
        }
        let cluster = store.cluster_id().await?.to_string();
        let providers = providers.into_iter().map(|p| (p.name().to_string(), p)).collect();
        Ok(Provisioner {
            providers,
            catalog: Arc::new(catalog),
            config,
            cluster,
            steps: Default::default(),
            quotas: Default::default(),
        })
    }

    /// What can be bought now: the catalog plus the dynamic providers' current offerings,
    /// without the providers being (or done being) evacuated, the offerings a provider
    /// recently had no capacity for and the regions whose quota it said was used up, so the next plan tries the next-best offering (elsewhere)
    /// instead of failing the same way again.
    pub async fn available_catalog(&self, store: &Store) -> Result<Arc<Catalog>> {
        let mut dynamic = Vec::new();
        for provider in self.providers.values().filter(|p| p.dynamic_offerings()) {
            match provider.offerings().await {
                Ok(offerings) => dynamic.extend(offerings),
                Err(error) => tracing::warn!(provider = provider.name(), %error, "cannot list offerings"),
            }
        }
        let exhausted = store.recently_exhausted(CAPACITY_MEMORY).await?;
        let evacuated = store.evacuated_providers().await?;
        if exhausted.is_empty() && dynamic.is_empty() && evacuated.is_empty() {
            return Ok(self.catalog.clone());
        }
        let offerings = self
            .catalog
            .offerings
            .iter()
            .chain(&dynamic)
            .filter(|o| !evacuated.contains(&o.provider))
            .filter(|o| {
                !exhausted.iter().any(|e| {
                    e.provider == o.provider
                        && e.region == o.region
                        && (e.whole_region || e.offering == o.instance_type)
                })
            })
            .cloned()
            .collect();
        Ok(Arc::new(Catalog { offerings }))
    }

    /// Each provider's quota: the dynamic providers' (hosts) every time, the others' at most
    /// every `QUOTA_MEMORY` (a provider that cannot be asked keeps its last known quota).
    /// Quotas bound what Canopy provisions: the planner counts every machine of a provider
    /// against its quota, so machines joined by hand are added on top.
    pub async fn quotas(&self, store: &Store) -> Result<BTreeMap<String, Quota>> {
        let mut quotas = {
            let mut cached = self.quotas.lock().await;
            let fresh = cached.as_ref().is_some_and(|(read, _)| read.elapsed() < QUOTA_MEMORY);
            let mut quotas = cached.as_ref().map(|(_, q)| q.clone()).unwrap_or_default();
            for provider in self.providers.values().filter(|p| !fresh || p.dynamic_offerings()) {
                match provider.quota().await {
                    Ok(Some(quota)) => {
                        quotas.insert(provider.name().to_string(), quota);
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(provider = provider.name(), %error, "cannot read the quota"),
                }
            }
            let read = match cached.as_ref() {
                Some((read, _)) if fresh => *read,
                _ => std::time::Instant::now(),
            };
            *cached = Some((read, quotas.clone()));
            quotas
        };
        for (provider, joined) in store.hand_joined_machines().await? {
            if let Some(max) = quotas.get_mut(&provider).and_then(|q| q.max_machines.as_mut()) {
                *max = max.saturating_add(joined);
            }
        }
        Ok(quotas)
    }

    /// One pass: create requested machines, time out slow boots, drain idle machines,
    /// terminate what should go, and reconcile with the providers.
    #[tracing::instrument(skip_all)]
    pub async fn step(&self, store: &Store) -> Result<()> {
        for machine in store.provisioned_in(&["requested"]).await? {
            self.create(store, &machine).await?;
        }
        for machine in store.boot_timed_out().await? {
            tracing::warn!(machine = %machine.name, "agent did not join before the boot timeout");
            store.mark_failed(machine.id, "the agent did not join before the boot timeout").await?;
        }
        store.drain_idle(self.config.idle_timeout).await?;
        for machine in store.to_terminate().await? {
            self.terminate(store, &machine).await?;
        }
        if self.steps.load(std::sync::atomic::Ordering::Relaxed).is_multiple_of(CONSOLIDATE_EVERY) {
            self.consolidate(store).await?;
        }
        // Listing every provider's machines is the expensive call: every few steps is enough.
        if self.steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(RECONCILE_EVERY) {
            self.reconcile(store).await?;
        }
        Ok(())
    }

    /// Gives back machines whose tasks fit on the others (canopy-core decides; the move itself
    /// is a successor placed by the scheduler, then the old task stops once it is healthy).
    async fn consolidate(&self, store: &Store) -> Result<()> {
        let Some(snapshot) = store.consolidation_snapshot().await? else { return Ok(()) };
        let plan = consolidate(&snapshot, &DisruptionBudget::default(), CONSOLIDATION_SEED);
        if plan.drains.is_empty() {
            return Ok(());
        }
        let saving: u64 = plan.drains.iter().map(|d| d.saving).sum();
        let machines: Vec<_> = plan.drains.iter().map(|d| d.machine).collect();
        let drained = store.drain_machines(&machines).await?;
        tracing::info!(drained, saving_per_hour = saving as f64 / 1e6, "consolidating");
        Ok(())
    }

    async fn create(&self, store: &Store, machine: &ProvisionedMachine) -> Result<()> {
        let Some(provider) = self.providers.get(&machine.provider) else {
            return store.mark_failed(machine.id, &format!("provider {} is not configured", machine.provider)).await;
        };
        let join_token = store.machine_join_token(machine.id, self.config.boot_timeout * 2).await?;
        let user_data = match render_bootstrap(machine, &self.config.control_url, &join_token) {
            Ok(text) => text,
            Err(error) => return store.mark_failed(machine.id, &format!("bootstrap template: {error}")).await,
        };
        let request = CreateMachine {
            idempotency_key: machine.id.to_string(),
            name: machine.name.clone(),
            region: machine.region.clone(),
            zone: machine.zone.clone(),
            instance_type: machine.offering.clone(),
            spot: machine.spot,
            user_data,
            tags: BTreeMap::from([
                (TAG_CLUSTER.into(), self.cluster.clone()),
                (TAG_MACHINE.into(), machine.id.to_string()),
            ]),
        };
        match provider.create(&request).await {
            Ok(created) => {
                store.mark_booting(machine.id, &created.provider_id, &created.zone, self.config.boot_timeout).await
            }
            Err(ProviderError::Throttled { retry_after }) => {
                tracing::warn!(machine = %machine.name, ?retry_after, "throttled; will retry");
                Ok(())
            }
            Err(error @ ProviderError::Other(_)) => {
                tracing::warn!(machine = %machine.name, %error, "create failed; will retry");
                Ok(())
            }
            // Capacity, quota, auth, invalid: this offering will not do; its tasks go back to
            // pending and the next plan chooses again.
            Err(error) => {
                tracing::warn!(machine = %machine.name, %error, "cannot buy this machine");
                store.mark_failed(machine.id, &error.to_string()).await
            }
        }
    }

    async fn terminate(&self, store: &Store, machine: &ProvisionedMachine) -> Result<()> {
        let Some(provider) = self.providers.get(&machine.provider) else {
            return store.mark_terminated(machine.id).await;
        };
        if let Some(provider_id) = &machine.provider_id
            && let Err(error) = provider.terminate(&machine.region, provider_id).await
        {
            tracing::warn!(machine = %machine.name, %error, "terminate failed; will retry");
            return Ok(());
        }
        tracing::info!(machine = %machine.name, state = %machine.state, "machine terminated");
        store.mark_terminated(machine.id).await
    }

    /// Compares our records with every provider's machines tagged as ours.
    async fn reconcile(&self, store: &Store) -> Result<()> {
        let known: HashMap<String, ProvisionedMachine> =
            store.known_machines().await?.into_iter().map(|m| (m.id.to_string(), m)).collect();
        for provider in self.providers.values() {
            let ours = match provider.list_ours(&self.cluster).await {
                Ok(ours) => ours,
                Err(error) => {
                    tracing::warn!(provider = provider.name(), %error, "cannot list machines");
                    continue;
                }
            };
            let mut seen = std::collections::HashSet::new();
            for instance in ours {
                let record = instance.idempotency_key().and_then(|key| known.get(key));
                if instance.status.is_gone() {
                    if let Some(record) = record
                        && matches!(record.state.as_str(), "requested" | "booting" | "ready" | "draining")
                        && record.provider_id.as_deref() == Some(instance.provider_id.as_str())
                    {
                        let reason = match &instance.interruption {
                            Some(Interruption::SpotReclaimed) => "spot capacity reclaimed by the provider".to_string(),
                            Some(Interruption::Failed(message)) => format!("instance failed: {message}"),
                            None => "instance stopped outside Canopy".to_string(),
                        };
                        tracing::warn!(machine = %record.name, %reason, "machine interrupted");
                        store.mark_failed(record.id, &reason).await?;
                    }
                    continue;
                }
                seen.insert(instance.provider_id.clone());
                match record {
                    // Created just before a crash: adopt it.
                    Some(record) if record.state == "requested" => {
                        tracing::info!(machine = %record.name, id = %instance.provider_id, "adopting instance created before a restart");
                        store
                            .mark_booting(record.id, &instance.provider_id, &instance.zone, self.config.boot_timeout)
                            .await?;
                    }
                    Some(record) if matches!(record.state.as_str(), "booting" | "ready" | "draining") => {
                        if record.provider_id.as_deref() != Some(instance.provider_id.as_str()) {
                            tracing::warn!(machine = %record.name, id = %instance.provider_id, "duplicate instance for one machine: terminating it");
                            let _ = provider.terminate(&instance.region, &instance.provider_id).await;
                        }
                    }
                    // Ours by tag, but no live record wants it: an orphan.
                    _ => {
                        tracing::warn!(id = %instance.provider_id, "terminating orphan instance");
                        if let Err(error) = provider.terminate(&instance.region, &instance.provider_id).await {
                            tracing::warn!(%error, "cannot terminate orphan");
                        }
                    }
                }
            }
            // Records whose instance the provider no longer has at all.
            for record in known.values().filter(|r| r.provider == provider.name()) {
                if let Some(provider_id) = &record.provider_id
                    && matches!(record.state.as_str(), "booting" | "ready" | "draining")
                    && !seen.contains(provider_id)
                {
                    match provider.describe(&record.region, provider_id).await {
                        Err(ProviderError::NotFound(_)) => {
                            store.mark_failed(record.id, "instance vanished at the provider").await?
                        }
                        Ok(instance) if instance.status.is_gone() => {
                            store.mark_failed(record.id, "instance stopped outside Canopy").await?
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// The machine's bootstrap script (cloud-init user data).
pub fn render_bootstrap(
    machine: &ProvisionedMachine,
    control_url: &str,
    join_token: &str,
) -> std::result::Result<String, String> {
    let mut context = tera::Context::new();
    context.insert("provider", &machine.provider);
    context.insert("machine_name", &machine.name);
    context.insert("control_url", control_url);
    context.insert("join_token", join_token);
    context.insert("milli_cpu", &machine.capacity_milli_cpu);
    context.insert("memory_bytes", &machine.capacity_memory);
    context.insert("region", &machine.region);
    context.insert("zone", &machine.zone);
    context.insert("instance_type", &machine.offering);
    context.insert("spot", &machine.spot);
    let mut tera = tera::Tera::default();
    tera.add_raw_template("agent.sh", include_str!("../../../templates/bootstrap/agent.sh.tera"))
        .map_err(|e| e.to_string())?;
    tera.render("agent.sh", &context).map_err(|e| e.to_string())
}
