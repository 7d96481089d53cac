//! The booter: turns emulated machines into machines that really run.
//!
//! For each running instance of any emulated cloud (an EC2 instance, a Nova server, an Azure
//! VM, a bare-metal host powered on through Redfish) it creates a cgroup slice sized to the
//! machine (vcpus -> cpu quota, memory -> memory limit) and runs the machine's bootstrap (the
//! user data, custom data or boot override the control service rendered) with `sh` inside it,
//! exactly as cloud-init or the host's firmware would; that script starts `canopy-agent`. Each
//! machine gets its own loopback address. When the machine stops, terminates or is evicted,
//! everything in its slice is killed.

use crate::emulator::{EmulatedInstance, Emulator};
use crate::machine::Slice;
use anyhow::Result;
use canopy_agent::cgroup::Cgroups;
use canopy_core::Resources;
use canopy_core::schedule::Catalog;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::process::Command;

/// Sizes of the EC2 instance types (moto does not report them; the price catalog does).
const AWS_TYPES: &str = include_str!("../../core/data/prices/aws.csv");

struct Booted {
    slice: Slice,
    /// The bootstrap it ran: a machine booted again with another one (a bare-metal host
    /// re-provisioned between two syncs) is a new machine.
    user_data: String,
}

pub struct Booter {
    cgroups: Cgroups,
    agent_bin: PathBuf,
    cgroup_root: PathBuf,
    state_dir: PathBuf,
    sizes: HashMap<String, Resources>,
    booted: Mutex<HashMap<String, Booted>>,
    next_address: std::sync::atomic::AtomicU32,
}

impl Booter {
    pub fn new(agent_bin: &Path, cgroup_root: &Path, state_dir: &Path) -> Result<Booter> {
        let catalog = Catalog::from_csv(AWS_TYPES)?;
        let sizes = catalog.offerings.into_iter().map(|o| (o.instance_type, o.capacity)).collect();
        Ok(Booter {
            cgroups: Cgroups::detect()?,
            agent_bin: agent_bin.to_path_buf(),
            cgroup_root: cgroup_root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            sizes,
            booted: Mutex::new(HashMap::new()),
            next_address: std::sync::atomic::AtomicU32::new(1),
        })
    }

    /// Brings booted machines in line with one emulator's instances, once. The lock on the
    /// booted set is never held across an await, so `shutdown` can run from any context.
    pub async fn sync(&self, emulator: &Emulator) -> Result<()> {
        let instances = emulator.instances().await?;
        for instance in &instances {
            // Unique across clouds, and a valid cgroup name.
            let key: String = format!("{}-{}", emulator.kind.name(), instance.instance_id)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                .collect();
            let running = instance.state == "running";
            let booted_with = self.booted().get(&key).map(|b| b.user_data.clone());
            if running && booted_with.as_ref().is_some_and(|u| *u != instance.user_data) {
                let old = self.booted().remove(&key);
                if let Some(machine) = old {
                    tracing::info!(machine = %key, "booted again with another bootstrap: killing the old one");
                    tokio::task::spawn_blocking(move || machine.slice.destroy()).await??;
                }
            }
            let known = self.booted().contains_key(&key);
            if running && !known && !instance.user_data.is_empty() {
                match self.boot(&key, instance) {
                    Ok(machine) => {
                        tracing::info!(machine = %key, r#type = %instance.instance_type, "booted");
                        self.booted().insert(key, machine);
                    }
                    Err(error) => tracing::warn!(machine = %key, %error, "boot failed"),
                }
            } else if !running && instance.state != "pending" {
                let gone = self.booted().remove(&key);
                if let Some(machine) = gone {
                    tracing::info!(machine = %key, state = %instance.state, "machine gone: killing it");
                    tokio::task::spawn_blocking(move || machine.slice.destroy()).await??;
                }
            }
        }
        Ok(())
    }

    fn booted(&self) -> std::sync::MutexGuard<'_, HashMap<String, Booted>> {
        self.booted.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn boot(&self, key: &str, instance: &EmulatedInstance) -> Result<Booted> {
        let capacity = match (instance.vcpus, instance.memory_mib) {
            (Some(vcpus), Some(mib)) => Resources::new(u64::from(vcpus) * 1000, mib << 20),
            _ => self.sizes.get(&instance.instance_type).copied().unwrap_or(Resources::new(1000, 1 << 30)),
        };
        let slice = Slice::create(&self.cgroups, &self.cgroup_root.join(key), capacity)?;
        let n = self.next_address.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let address = format!("127.2.{}.{}", n / 250, n % 250 + 1);
        let state = self.state_dir.join(key);
        std::fs::create_dir_all(&state)?;
        let log = std::fs::File::create(state.join("boot.log"))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&instance.user_data)
            .env("CANOPY_AGENT_BIN", &self.agent_bin)
            .env("CANOPY_STATE_DIR", &state)
            .env("CANOPY_ADDRESS", &address)
            .env("CANOPY_CGROUP_PARENT", slice.workloads())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(log.try_clone()?))
            .stderr(std::process::Stdio::from(log));
        slice.spawn_agent(command)?;
        Ok(Booted { slice, user_data: instance.user_data.clone() })
    }

    /// Kills every booted machine and removes their common parent cgroup. Synchronous, so it
    /// also works from `Drop`.
    pub fn shutdown(&self) {
        let machines: Vec<Booted> = self.booted().drain().map(|(_, machine)| machine).collect();
        for machine in machines {
            let _ = machine.slice.destroy();
        }
        if let Err(error) = self.cgroups.open(&self.cgroup_root).kill_tree() {
            tracing::warn!(%error, "cannot remove the booter's cgroups");
        }
    }
}

/// Runs `sync` over every emulator every `interval` until `stop` flips.
pub async fn run(
    booter: Arc<Booter>,
    emulators: Vec<Arc<Emulator>>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        for emulator in &emulators {
            if let Err(error) = booter.sync(emulator).await {
                tracing::warn!(cloud = emulator.kind.name(), %error, "booter sync failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    booter.shutdown();
}
