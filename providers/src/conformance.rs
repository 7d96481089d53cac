//! The conformance suite every provider passes, against its emulator in the normal test run
//! and against the real cloud when someone points it there. Each check is a function a
//! provider's test file calls from its own `#[tokio::test]`; they return an error naming what
//! did not hold instead of panicking, so one helper can run them all.

use crate::{CreateMachine, Interruption, MachineStatus, Provider, ProviderError, TAG_CLUSTER, TAG_MACHINE};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A local emulator (localstack/): `PYTHON SCRIPT --host 127.0.0.1 --port 0 ARGS...`, ready
/// once it prints `ready <url>`; killed when dropped, however the test ends.
pub struct Emulator {
    child: Child,
    pub url: String,
}

impl Emulator {
    /// `installer`, relative to `repo`, prints the venv's python (the emulators with pip
    /// dependencies); without one, `python3` runs the script.
    pub fn start(repo: &Path, installer: Option<&str>, script: &str, args: &[String]) -> Result<Emulator, String> {
        let python = match installer {
            Some(installer) => {
                let out = Command::new(repo.join(installer))
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|e| format!("{installer}: {e}"))?;
                if !out.status.success() {
                    return Err(format!("{installer} failed"));
                }
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            None => "python3".to_string(),
        };
        let mut child = Command::new(&python)
            .arg(repo.join(script))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {script} with {python}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("ready ") {
                        break url.trim().to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    return Err(format!("{script} exited before it was ready"));
                }
            }
        };
        // Keep draining stdout so the emulator never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Emulator { child, url })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The faults every emulator injects through the same control routes, `/_canopy/faults/*`.
pub struct ControlFaults {
    url: String,
    http: reqwest::Client,
}

impl ControlFaults {
    pub fn new(emulator_url: &str) -> ControlFaults {
        ControlFaults { url: emulator_url.to_string(), http: reqwest::Client::new() }
    }

    /// POSTs `body` to `/_canopy/<route>` (emulator-specific faults too).
    pub async fn post(&self, route: &str, body: serde_json::Value) -> Result<(), String> {
        let response = self
            .http
            .post(format!("{}/_canopy/{route}", self.url))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        response.error_for_status().map(|_| ()).map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Faults for ControlFaults {
    async fn interrupt(&self, provider_id: &str) -> Result<(), String> {
        self.post("faults/interrupt", serde_json::json!({"instance_id": provider_id})).await
    }

    async fn fail(&self, provider_id: &str) -> Result<(), String> {
        self.post("faults/fail", serde_json::json!({"instance_id": provider_id})).await
    }

    async fn exhaust_quota(&self) -> Result<(), String> {
        self.post("faults/quota", serde_json::json!({})).await
    }

    async fn exhaust_capacity(&self, instance_type: &str) -> Result<(), String> {
        self.post("faults/capacity", serde_json::json!({"instance_type": instance_type})).await
    }

    async fn slow_boot(&self, seconds: f64) -> Result<(), String> {
        self.post("faults/pending", serde_json::json!({"seconds": seconds})).await
    }

    async fn clear(&self) -> Result<(), String> {
        self.post("faults/clear", serde_json::json!({})).await
    }
}

/// Faults the emulator can inject (the real cloud does them by itself). Each provider's
/// emulator has a control endpoint for them; `clear` undoes all but the machines' fates.
#[async_trait::async_trait]
pub trait Faults: Send + Sync {
    /// Reclaims a spot machine, as the provider would (providers without spot: unused).
    async fn interrupt(&self, provider_id: &str) -> Result<(), String>;
    /// Breaks a machine (host failure, ERROR state, BMC reports it off).
    async fn fail(&self, provider_id: &str) -> Result<(), String>;
    /// Every create from now on is refused for quota (providers without quotas: unused).
    async fn exhaust_quota(&self) -> Result<(), String>;
    /// Every create of `instance_type` from now on is refused for capacity.
    async fn exhaust_capacity(&self, instance_type: &str) -> Result<(), String>;
    /// Machines created from now on stay pending (building, powering on) this long.
    async fn slow_boot(&self, seconds: f64) -> Result<(), String>;
    /// Removes every fault set above.
    async fn clear(&self) -> Result<(), String>;
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
    /// Whether the provider sells interruptible (spot) machines.
    pub spot: bool,
    /// Whether the provider has quotas (owned hardware has none: only capacity).
    pub quota: bool,
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

/// The checks that need no injected fault (so they also run against a real cloud); the
/// failures, each named.
pub async fn run_basic(f: &Fixture<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    macro_rules! check {
        ($name:ident) => {
            if let Err(error) = $name(f).await {
                failures.push(format!("{}: {error}", stringify!($name)));
            }
        };
    }
    check!(offerings);
    check!(create_and_describe);
    check!(idempotent_create);
    check!(list_ours);
    check!(terminate);
    check!(not_found);
    failures
}

/// Every check, in order; the failures, each named (empty when the provider conforms).
/// The faults are cleared after the fault checks, whatever their outcome.
pub async fn run_all(f: &Fixture<'_>) -> Vec<String> {
    let mut failures = run_basic(f).await;
    macro_rules! check {
        ($name:ident) => {
            if let Err(error) = $name(f).await {
                failures.push(format!("{}: {error}", stringify!($name)));
            }
        };
    }
    if f.spot {
        check!(interruption);
    }
    check!(failure);
    if f.quota {
        check!(quota);
    }
    check!(capacity);
    check!(slow_boot);
    if let Err(error) = f.faults.clear().await {
        failures.push(format!("clearing faults: {error}"));
    }
    failures
}

/// A machine that breaks is reported gone, with the failure.
pub async fn failure(f: &Fixture<'_>) -> Check {
    let machine = f.provider.create(&f.request("failing", false)).await.map_err(|e| format!("create: {e}"))?;
    f.faults.fail(&machine.provider_id).await?;
    for _ in 0..50 {
        let described =
            f.provider.describe(&f.region, &machine.provider_id).await.map_err(|e| format!("describe: {e}"))?;
        if let Some(Interruption::Failed(_)) = described.interruption {
            ensure(described.status.is_gone(), || format!("failed but {:?}", described.status))?;
            return f.provider.terminate(&f.region, &machine.provider_id).await.map_err(|e| format!("terminate: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the failure never showed".into())
}

/// A create beyond the quota is `QuotaExceeded` and leaves no machine behind.
pub async fn quota(f: &Fixture<'_>) -> Check {
    f.faults.exhaust_quota().await?;
    let result = f.provider.create(&f.request("over-quota", false)).await;
    f.faults.clear().await?;
    match result {
        Err(ProviderError::QuotaExceeded(_)) => {}
        other => return Err(format!("create over quota gave {other:?}")),
    }
    let ours = f.provider.list_ours(&f.cluster).await.map_err(|e| format!("list: {e}"))?;
    let left = ours.iter().filter(|m| m.idempotency_key() == Some("over-quota") && !m.status.is_gone()).count();
    ensure(left == 0, || format!("{left} machines left by a refused create"))
}

/// A create the provider has no capacity for is `InsufficientCapacity` naming the type.
pub async fn capacity(f: &Fixture<'_>) -> Check {
    f.faults.exhaust_capacity(&f.instance_type).await?;
    let result = f.provider.create(&f.request("no-capacity", false)).await;
    f.faults.clear().await?;
    match result {
        Err(ProviderError::InsufficientCapacity { instance_type, .. }) => {
            ensure(instance_type == f.instance_type, || format!("capacity error names {instance_type:?}"))
        }
        other => Err(format!("create without capacity gave {other:?}")),
    }
}

/// A slow boot shows as `Pending`, then `Running`.
pub async fn slow_boot(f: &Fixture<'_>) -> Check {
    f.faults.slow_boot(1.5).await?;
    let created = f.provider.create(&f.request("slow", false)).await;
    f.faults.slow_boot(0.0).await?;
    let machine = created.map_err(|e| format!("create: {e}"))?;
    let first = f.provider.describe(&f.region, &machine.provider_id).await.map_err(|e| format!("describe: {e}"))?;
    ensure(first.status == MachineStatus::Pending, || format!("a slow boot is {:?} at once", first.status))?;
    for _ in 0..100 {
        let described =
            f.provider.describe(&f.region, &machine.provider_id).await.map_err(|e| format!("describe: {e}"))?;
        if described.status == MachineStatus::Running {
            return f.provider.terminate(&f.region, &machine.provider_id).await.map_err(|e| format!("terminate: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the slow machine never ran".into())
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
