//! The provider conformance suite against hosts emulated by sushy-tools' Redfish emulator
//! (localstack/redfish/canopy_redfish.py, fake driver, with Canopy's fault routes), plus the
//! bare-metal specifics: wrong BMC credentials and the bootstrap the booter reads.

use canopy_core::Resources;
use canopy_provider_baremetal::{BareMetalConfig, BareMetalProvider, Host, Inventory, MemoryInventory};
use canopy_providers::conformance::{self, ControlFaults, Faults, Fixture};
use canopy_providers::{CreateMachine, Provider, ProviderError, TAG_CLUSTER, TAG_MACHINE};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

const REGION: &str = "lab";
const CLASS: &str = "sushy-small";
const USER: &str = "canopy";
const PASSWORD: &str = "bmc-secret";

/// The emulator process, killed when the test ends however it ends.
struct Emulator {
    child: Child,
    url: String,
    /// The emulator's state (sqlite files, htpasswd): SIGKILL skips its own clean-up.
    state_dir: PathBuf,
}

impl Emulator {
    fn start(systems: usize) -> Emulator {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let install = Command::new(repo.join("localstack/redfish/install.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("install.sh");
        assert!(install.status.success(), "installing sushy-tools failed");
        let python = String::from_utf8(install.stdout).expect("utf-8").trim().to_string();
        let state_dir = std::env::temp_dir().join(format!("canopy-redfish-test-{}", uuid::Uuid::new_v4().simple()));
        let mut child = Command::new(python)
            .arg(repo.join("localstack/redfish/canopy_redfish.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--systems", &systems.to_string()])
            .args(["--username", USER, "--password", PASSWORD, "--power-delay", "0.2"])
            .arg("--state-dir")
            .arg(&state_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start canopy_redfish.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("the emulator exited before it was ready").expect("read");
            if let Some(url) = line.strip_prefix("ready ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Emulator { child, url, state_dir }
    }

    /// `/_canopy/instances`: what the local stack's booter reads.
    async fn instances(&self) -> Vec<serde_json::Value> {
        reqwest::get(format!("{}/_canopy/instances", self.url))
            .await
            .expect("GET /_canopy/instances")
            .json()
            .await
            .expect("instances JSON")
    }

    /// One host per emulated system, registered with these BMC credentials.
    async fn hosts(&self, password: &str) -> Vec<Host> {
        self.instances()
            .await
            .iter()
            .map(|system| Host {
                name: format!("{}-{}", system["name"].as_str().expect("name"), uuid::Uuid::new_v4().simple()),
                bmc_url: self.url.clone(),
                bmc_username: USER.into(),
                bmc_password: password.into(),
                system_id: system["instance_id"].as_str().expect("instance_id").into(),
                region: REGION.into(),
                class: CLASS.into(),
                capacity: Resources::new(
                    system["vcpus"].as_u64().expect("vcpus") * 1000,
                    system["memory_mib"].as_u64().expect("memory_mib") << 20,
                ),
                labels: BTreeMap::from([("site".to_string(), "lab-1".to_string())]),
                price_per_hour: 150_000,
            })
            .collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn provider(inventory: Arc<MemoryInventory>) -> BareMetalProvider {
    let config = BareMetalConfig {
        graceful_shutdown_timeout: Duration::from_secs(5),
        force_off_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(10),
        accept_invalid_bmc_certs: false,
    };
    BareMetalProvider::with_config(inventory, config).expect("provider")
}

/// Capacity is the inventory's business (every host of the class claimed by someone else);
/// failures and slow boots are the emulated BMC's.
struct RedfishFaults {
    control: ControlFaults,
    inventory: Arc<MemoryInventory>,
    blockers: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Faults for RedfishFaults {
    async fn interrupt(&self, _provider_id: &str) -> Result<(), String> {
        Err("bare metal has no spot machines to interrupt".into())
    }

    async fn fail(&self, provider_id: &str) -> Result<(), String> {
        let hosts = self.inventory.hosts().await.map_err(|e| e.to_string())?;
        let host = hosts.iter().find(|h| h.name == provider_id).ok_or(format!("no host {provider_id}"))?;
        self.control.fail(&host.system_id).await
    }

    async fn exhaust_quota(&self) -> Result<(), String> {
        Err("bare metal has no quota".into())
    }

    async fn exhaust_capacity(&self, instance_type: &str) -> Result<(), String> {
        let mut blockers = self.blockers.lock().await;
        loop {
            let key = format!("capacity-fault-{}", blockers.len());
            match self.inventory.claim(&key, REGION, instance_type, &BTreeMap::new()).await {
                Ok(Some(host)) => blockers.push(host.name),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn slow_boot(&self, seconds: f64) -> Result<(), String> {
        self.control.slow_boot(seconds).await
    }

    async fn clear(&self) -> Result<(), String> {
        let blockers: Vec<String> = self.blockers.lock().await.drain(..).collect();
        for host in blockers {
            self.inventory.release(&host).await.map_err(|e| e.to_string())?;
        }
        self.control.clear().await
    }
}

fn request(cluster: &str, key: &str, user_data: &str) -> CreateMachine {
    CreateMachine {
        idempotency_key: key.into(),
        name: key.into(),
        region: REGION.into(),
        zone: String::new(),
        instance_type: CLASS.into(),
        spot: false,
        user_data: user_data.into(),
        tags: BTreeMap::from([
            (TAG_CLUSTER.to_string(), cluster.to_string()),
            (TAG_MACHINE.to_string(), key.to_string()),
        ]),
    }
}

#[tokio::test]
async fn baremetal_passes_the_provider_conformance_suite() {
    let emulator = Emulator::start(4);
    let inventory = Arc::new(MemoryInventory::new(emulator.hosts(PASSWORD).await));
    let provider = provider(inventory.clone());
    let faults = RedfishFaults {
        control: ControlFaults::new(&emulator.url),
        inventory: inventory.clone(),
        blockers: Mutex::new(Vec::new()),
    };
    let fixture = Fixture {
        provider: &provider,
        faults: &faults,
        region: REGION.into(),
        zone: String::new(),
        instance_type: CLASS.into(),
        cluster: format!("conformance-{}", uuid::Uuid::new_v4()),
        spot: false,
        quota: false,
    };
    let failures = conformance::run_all(&fixture).await;
    assert!(failures.is_empty(), "conformance failures:\n{}", failures.join("\n"));
    // The host that failed is out of the pool; every other one was given back.
    assert_eq!(inventory.quarantined().len(), 1, "{:?}", inventory.quarantined());
    assert!(inventory.claims().await.unwrap().is_empty());
}

#[tokio::test]
async fn wrong_bmc_credentials_are_an_auth_error() {
    let emulator = Emulator::start(1);
    let inventory = Arc::new(MemoryInventory::new(emulator.hosts("not-the-password").await));
    let provider = provider(inventory.clone());
    match provider.create(&request("auth", "auth-0", "#!/bin/sh\n")).await {
        Err(ProviderError::Auth(message)) => assert!(!message.contains("not-the-password"), "{message}"),
        other => panic!("create with wrong credentials gave {other:?}"),
    }
    // Nothing is held for a machine that cannot exist.
    assert!(inventory.claims().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_bootstrap_reaches_the_host_for_the_booter() {
    let emulator = Emulator::start(2);
    let inventory = Arc::new(MemoryInventory::new(emulator.hosts(PASSWORD).await));
    let provider = provider(inventory.clone());
    let script = "#!/bin/sh\nexec canopy-agent --join 'https://control:8443' --token 'abc=='\n";
    let machine = provider.create(&request("boot", "boot-0", script)).await.expect("create");
    let host = inventory.hosts().await.unwrap().into_iter().find(|h| h.name == machine.provider_id).expect("host");

    let mut state = String::new();
    for _ in 0..50 {
        let instances = emulator.instances().await;
        let system = instances.iter().find(|i| i["instance_id"] == host.system_id.as_str()).expect("system listed");
        assert_eq!(system["user_data"], script, "bootstrap as the booter reads it");
        state = system["state"].as_str().unwrap_or_default().to_string();
        if state == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "running");
    assert_eq!(
        provider.describe(REGION, &machine.provider_id).await.expect("describe").status,
        canopy_providers::MachineStatus::Running
    );

    provider.terminate(REGION, &machine.provider_id).await.expect("terminate");
    let instances = emulator.instances().await;
    let system = instances.iter().find(|i| i["instance_id"] == host.system_id.as_str()).expect("system listed");
    assert_eq!((system["state"].as_str(), system["user_data"].as_str()), (Some("stopped"), Some("")));
    assert!(inventory.quarantined().is_empty(), "a terminate Canopy asked for is no failure");
}
