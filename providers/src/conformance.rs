//! The conformance suite every provider passes, against its emulator in the normal test run
//! and against the real cloud when someone points it there. Each check is a function a
//! provider's test file calls from its own `#[tokio::test]`; they return an error naming what
//! did not hold instead of panicking, so one helper can run them all.

use crate::{CreateMachine, Interruption, MachineStatus, Provider, ProviderError, TAG_CLUSTER, TAG_MACHINE};
use std::collections::BTreeMap;
use std::time::Duration;

/// Faults the emulator can inject (the real cloud does them by itself).
#[async_trait::async_trait]
pub trait Faults: Send + Sync {
    /// Reclaims a spot machine, as the provider would.
    async fn interrupt(&self, provider_id: &str) -> Result<(), String>;
}

/// What the suite runs against.
pub struct Fixture<'a> {
    pub provider: &'a dyn Provider,
    pub faults: &'a dyn Faults,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    /// Unique per test, so parallel tests never see each other's machines.
    pub cluster: String,
}

type Check = Result<(), String>;

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Check {
    if condition { Ok(()) } else { Err(what()) }
}

impl Fixture<'_> {
    pub fn request(&self, key: &str, spot: bool) -> CreateMachine {
        CreateMachine {
            idempotency_key: key.to_string(),
            name: format!("conformance-{key}"),
            region: self.region.clone(),
            zone: self.zone.clone(),
            instance_type: self.instance_type.clone(),
            spot,
            user_data: format!("#!/bin/sh\necho conformance {key}\n"),
            tags: BTreeMap::from([
                (TAG_CLUSTER.to_string(), self.cluster.clone()),
                (TAG_MACHINE.to_string(), key.to_string()),
            ]),
        }
    }
}

/// The provider offers priced machines, including the fixture's instance type.
pub async fn offerings(f: &Fixture<'_>) -> Check {
    let offerings = f.provider.offerings().await.map_err(|e| format!("offerings: {e}"))?;
    ensure(!offerings.is_empty(), || "no offerings".into())?;
    ensure(offerings.iter().all(|o| o.provider == f.provider.name()), || "offerings of another provider".into())?;
    ensure(offerings.iter().all(|o| o.capacity.milli_cpu > 0 && o.capacity.memory_bytes > 0), || {
        "offering without capacity".into()
    })?;
    ensure(offerings.iter().all(|o| o.sunk || o.price_on_demand > 0), || "bought offering without a price".into())?;
    ensure(offerings.iter().any(|o| o.instance_type == f.instance_type && o.region == f.region), || {
        format!("{} in {} is not offered", f.instance_type, f.region)
    })
}

/// Create, then describe: the machine carries what was asked for.
pub async fn create_and_describe(f: &Fixture<'_>) -> Check {
    let request = f.request("create-describe", false);
    let created = f.provider.create(&request).await.map_err(|e| format!("create: {e}"))?;
    let described = f.provider.describe(&f.region, &created.provider_id).await.map_err(|e| format!("describe: {e}"))?;
    ensure(described.provider_id == created.provider_id, || "describe returned another machine".into())?;
    ensure(described.instance_type == f.instance_type, || format!("instance type {}", described.instance_type))?;
    ensure(f.zone.is_empty() || described.zone == f.zone, || format!("zone {} instead of {}", described.zone, f.zone))?;
    ensure(described.idempotency_key() == Some("create-describe"), || format!("tags {:?}", described.tags))?;
    ensure(!described.spot, || "on-demand machine reported as spot".into())?;
    ensure(matches!(described.status, MachineStatus::Pending | MachineStatus::Running), || {
        format!("status {:?}", described.status)
    })?;
    f.provider.terminate(&f.region, &created.provider_id).await.map_err(|e| format!("terminate: {e}"))
}

/// The same idempotency key twice gives one machine.
pub async fn idempotent_create(f: &Fixture<'_>) -> Check {
    let request = f.request("idempotent", false);
    let first = f.provider.create(&request).await.map_err(|e| format!("first create: {e}"))?;
    let second = f.provider.create(&request).await.map_err(|e| format!("second create: {e}"))?;
    ensure(first.provider_id == second.provider_id, || {
        format!("two machines: {} and {}", first.provider_id, second.provider_id)
    })?;
    let ours = f.provider.list_ours(&f.cluster).await.map_err(|e| format!("list: {e}"))?;
    let count = ours.iter().filter(|m| m.idempotency_key() == Some("idempotent") && !m.status.is_gone()).count();
    ensure(count == 1, || format!("{count} live machines with the key"))?;
    f.provider.terminate(&f.region, &first.provider_id).await.map_err(|e| format!("terminate: {e}"))
}

/// list_ours returns this cluster's machines and nobody else's.
pub async fn list_ours(f: &Fixture<'_>) -> Check {
    let mine = f.provider.create(&f.request("listed", false)).await.map_err(|e| format!("create: {e}"))?;
    let mut foreign = f.request("foreign", false);
    foreign.tags.insert(TAG_CLUSTER.into(), format!("{}-other", f.cluster));
    let theirs = f.provider.create(&foreign).await.map_err(|e| format!("create foreign: {e}"))?;
    let ours = f.provider.list_ours(&f.cluster).await.map_err(|e| format!("list: {e}"))?;
    ensure(ours.iter().any(|m| m.provider_id == mine.provider_id), || "own machine missing".into())?;
    ensure(ours.iter().all(|m| m.provider_id != theirs.provider_id), || "another cluster's machine listed".into())?;
    ensure(ours.iter().all(|m| m.tags.get(TAG_CLUSTER) == Some(&f.cluster)), || "untagged machine listed".into())?;
    for machine in [&mine, &theirs] {
        f.provider.terminate(&f.region, &machine.provider_id).await.map_err(|e| format!("terminate: {e}"))?;
    }
    Ok(())
}

/// Terminate ends the machine; terminating again is fine.
pub async fn terminate(f: &Fixture<'_>) -> Check {
    let machine = f.provider.create(&f.request("terminated", false)).await.map_err(|e| format!("create: {e}"))?;
    f.provider.terminate(&f.region, &machine.provider_id).await.map_err(|e| format!("terminate: {e}"))?;
    match f.provider.describe(&f.region, &machine.provider_id).await {
        Ok(described) => ensure(described.status.is_gone(), || format!("still {:?}", described.status))?,
        Err(ProviderError::NotFound(_)) => {}
        Err(e) => return Err(format!("describe after terminate: {e}")),
    }
    f.provider.terminate(&f.region, &machine.provider_id).await.map_err(|e| format!("second terminate: {e}"))
}

/// Unknown machines are `NotFound`, a kind the controller can act on.
pub async fn not_found(f: &Fixture<'_>) -> Check {
    match f.provider.describe(&f.region, "i-0123456789abcdef0").await {
        Err(ProviderError::NotFound(_)) => Ok(()),
        other => Err(format!("describe of an unknown machine gave {other:?}")),
    }
}

/// A reclaimed spot machine reports the interruption.
pub async fn interruption(f: &Fixture<'_>) -> Check {
    let machine = f.provider.create(&f.request("spot", true)).await.map_err(|e| format!("create spot: {e}"))?;
    let described = f.provider.describe(&f.region, &machine.provider_id).await.map_err(|e| format!("describe: {e}"))?;
    ensure(described.spot, || "spot machine not reported as spot".into())?;
    f.faults.interrupt(&machine.provider_id).await?;
    for _ in 0..50 {
        let described =
            f.provider.describe(&f.region, &machine.provider_id).await.map_err(|e| format!("describe: {e}"))?;
        if described.interruption == Some(Interruption::SpotReclaimed) {
            return ensure(described.status.is_gone(), || format!("interrupted but {:?}", described.status));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the interruption never showed".into())
}
