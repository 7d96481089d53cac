//! Controllers: level-triggered reconcile loops, Kubernetes style.
//!
//! Each step reads desired and actual state from the store, decides (via canopy-core), writes
//! the result in one transaction, and is safe to repeat after a crash. Only the replica that
//! holds the advisory lock for a step acts, so several control services can share a database.

pub mod autoscale;
pub mod metering;
pub mod provisioning;

use crate::store::{Result, Store};
use canopy_core::schedule::{Catalog, Quota};
use provisioning::Provisioner;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What can be bought now, as the last controller step saw it: the API's policy assessments
/// (deploy, dry run, explain) dry-run against it. Derived from the providers, so a restart
/// rebuilds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buyable {
    pub catalog: Arc<Catalog>,
    pub quotas: BTreeMap<String, Quota>,
}

#[derive(Clone)]
pub struct ControllerConfig {
    /// How often the loops run.
    pub tick: Duration,
    /// A machine silent for longer than this is lost and its tasks are replaced.
    pub machine_ttl: Duration,
    /// Buys and returns machines when set; without it, only machines joined by hand are used.
    pub provisioner: Option<Arc<Provisioner>>,
    /// Scales apps with `[autoscale]`; shared by the clones of this config.
    pub autoscaler: Arc<autoscale::Autoscaler>,
    /// Materialises the cost ledger; shared by the clones of this config.
    pub metering: Arc<metering::Metering>,
    /// Published after every step that changed it.
    pub buyable: Arc<watch::Sender<Buyable>>,
    /// What the last portability re-check saw (what could be bought, how many policy
    /// versions there were): a change in either re-checks every app.
    pub rechecked: Arc<tokio::sync::Mutex<Option<(Buyable, i64)>>>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            tick: Duration::from_millis(250),
            machine_ttl: Duration::from_secs(6),
            provisioner: None,
            autoscaler: Default::default(),
            metering: Default::default(),
            buyable: Arc::new(watch::Sender::new(Buyable::default())),
            rechecked: Default::default(),
        }
    }
}

/// One pass of every controller, in dependency order: liveness (frees lost tasks' slots),
/// autoscaling (sets instance counts), apps (creates and retires tasks), placement (assigns
/// pending tasks, asks for machines), evacuations (drain an evacuated provider's machines wave
/// by wave), provisioning (buys, waits for, and returns machines), metering (the cost ledger,
/// at its own pace).
#[tracing::instrument(skip_all)]
pub async fn step(store: &Store, config: &ControllerConfig) -> Result<()> {
    let machines_lost = store.mark_lost_machines(config.machine_ttl).await?;
    for machine in &machines_lost {
        tracing::warn!(machine = %machine, "machine lost: missed heartbeats");
    }
    config.autoscaler.step(store).await?;
    let task_changes = store.reconcile_apps().await?;
    let (catalog, quotas) = match &config.provisioner {
        Some(provisioner) => (provisioner.available_catalog(store).await?, provisioner.quotas(store).await?),
        None => (Arc::new(Catalog::default()), Default::default()),
    };
    config.buyable.send_if_modified(|buyable| {
        let changed = buyable.catalog != catalog || buyable.quotas != quotas;
        if changed {
            *buyable = Buyable { catalog: catalog.clone(), quotas: quotas.clone() };
        }
        changed
    });
    // A failed re-check is tried again next step; it never holds placement up.
    if let Err(error) = recheck_portability(store, config).await {
        tracing::warn!(%error, "portability re-check failed");
    }
    let placement = store.place_pending(&catalog, &quotas).await?;
    if placement.placed > 0 || task_changes > 0 || placement.machines_requested > 0 {
        tracing::info!(
            task_changes,
            placed = placement.placed,
            unplaced = placement.unplaced,
            machines_requested = placement.machines_requested,
            "reconciled"
        );
    }
    store.step_evacuations().await?;
    if let Some(provisioner) = &config.provisioner {
        provisioner.step(store).await?;
    }
    config.metering.step(store).await?;
    Ok(())
}

/// When a policy was applied or what can be bought changed, re-assesses every live app: its
/// binding follows the policies, and an app whose min_providers is no longer met is flagged
/// (an audit event when the flag flips).
async fn recheck_portability(store: &Store, config: &ControllerConfig) -> Result<()> {
    let buyable = config.buyable.borrow().clone();
    let key = (buyable, store.policy_generation().await?);
    let mut rechecked = config.rechecked.lock().await;
    if rechecked.as_ref() == Some(&key) {
        return Ok(());
    }
    let flipped = crate::policy::recheck(store, &key.0).await?;
    tracing::info!(flipped, "portability re-checked");
    *rechecked = Some(key);
    Ok(())
}

/// Runs `step` every tick until `shutdown` flips. Errors are logged and retried next tick.
pub async fn run(store: Store, config: ControllerConfig, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(error) = step(&store, &config).await {
                    tracing::error!(%error, "controller step failed");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
