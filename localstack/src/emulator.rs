//! The emulated clouds: one process per provider, each speaking that provider's real API
//! (moto for EC2, Canopy's fakes of Nova and ARM, sushy-tools for Redfish) plus the same small
//! control API under `/_canopy/`: the instances it holds (for the booter) and fault injection.
//! Each prints `ready <url>` once it listens; the ones with Python dependencies install them
//! into their own venv on first use.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which provider an emulator stands in for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Aws,
    Azure,
    OpenStack,
    BareMetal,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Aws, Kind::Azure, Kind::OpenStack, Kind::BareMetal];

    /// The provider's name, as machines carry it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Aws => "aws",
            Kind::Azure => "azure",
            Kind::OpenStack => "openstack",
            Kind::BareMetal => "baremetal",
        }
    }

    /// The installer that prints the Python to use, for emulators with dependencies.
    fn installer(self) -> Option<&'static str> {
        match self {
            Kind::Aws => Some("localstack/moto/install.sh"),
            Kind::BareMetal => Some("localstack/redfish/install.sh"),
            Kind::Azure | Kind::OpenStack => None,
        }
    }

    fn script(self) -> &'static str {
        match self {
            Kind::Aws => "localstack/moto/canopy_moto.py",
            Kind::Azure => "localstack/azure/canopy_azure.py",
            Kind::OpenStack => "localstack/openstack/canopy_openstack.py",
            Kind::BareMetal => "localstack/redfish/canopy_redfish.py",
        }
    }
}

/// One emulated machine as the control routes report it.
#[derive(Clone, Debug, Deserialize)]
pub struct EmulatedInstance {
    pub instance_id: String,
    /// A name besides the id, where the emulator has one (Redfish systems).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub region: String,
    /// `pending`, `running`, `stopping`, `stopped` or `terminated`.
    pub state: String,
    #[serde(default)]
    pub instance_type: String,
    #[serde(default)]
    pub availability_zone: String,
    /// The bootstrap the control service rendered (user data, custom data, boot override).
    #[serde(default)]
    pub user_data: String,
    #[serde(default)]
    pub spot: bool,
    /// The machine's size, when the emulator knows it (EC2's comes from the price catalog).
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

/// A running emulator. Killed when dropped.
pub struct Emulator {
    pub kind: Kind,
    pub url: String,
    child: Child,
    http: reqwest::Client,
}

impl Emulator {
    /// Installs what it needs (idempotently) and starts the emulator on a free loopback port.
    pub async fn start(kind: Kind, repo: &Path, log: &Path, args: &[String]) -> Result<Emulator> {
        let python = match kind.installer() {
            Some(installer) => {
                let install = Command::new(repo.join(installer))
                    .stderr(Stdio::inherit())
                    .output()
                    .await
                    .with_context(|| format!("running {installer}"))?;
                if !install.status.success() {
                    bail!("installing the {} emulator failed ({installer})", kind.name());
                }
                String::from_utf8(install.stdout)?.trim().to_string()
            }
            None => "python3".to_string(),
        };
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(&python)
            .arg(repo.join(kind.script()))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {} emulator with {python}", kind.name()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("ready ") {
                    return Ok(url.trim().to_string());
                }
            }
            bail!("the {} emulator exited before it was ready; see {}", kind.name(), log.display())
        })
        .await
        .with_context(|| format!("the {} emulator did not start in time", kind.name()))??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Emulator { kind, url, child, http })
    }

    pub async fn instances(&self) -> Result<Vec<EmulatedInstance>> {
        Ok(self.http.get(format!("{}/_canopy/instances", self.url)).send().await?.error_for_status()?.json().await?)
    }

    /// Reclaims a spot instance the way the provider does.
    pub async fn interrupt(&self, instance_id: &str) -> Result<()> {
        self.post("/_canopy/faults/interrupt", serde_json::json!({"instance_id": instance_id})).await
    }

    pub async fn fail(&self, instance_id: &str) -> Result<()> {
        self.post("/_canopy/faults/fail", serde_json::json!({"instance_id": instance_id})).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> Result<()> {
        self.http.post(format!("{}{path}", self.url)).json(&body).send().await?.error_for_status()?;
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// The environment that points a control service's providers at these emulators (an empty
/// URL leaves that provider off). The credentials are the ones the emulators accept.
pub fn control_env(repo: &Path, aws: &str, azure: &str, openstack: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut set = |key: &str, value: &str| env.push((key.to_string(), value.to_string()));
    if !aws.is_empty() {
        set("CANOPY_AWS_REGIONS", "us-east-1");
        set("CANOPY_AWS_ENDPOINT", aws);
        set("AWS_ACCESS_KEY_ID", "test");
        set("AWS_SECRET_ACCESS_KEY", "test");
        set("AWS_EC2_METADATA_DISABLED", "true");
    }
    if !azure.is_empty() {
        set("CANOPY_AZURE_REGIONS", "eastus,westeurope");
        // The fake answers TLS on the same port (the Azure SDK's token client insists on
        // https), with a certificate from the repo's test-only CA.
        set("CANOPY_AZURE_ENDPOINT", &azure.replacen("http://", "https://", 1));
        set("CANOPY_AZURE_CA_CERT", &repo.join("localstack/azure/tls/ca.pem").to_string_lossy());
        set(
            "CANOPY_AZURE_SUBNET_ID",
            &format!(
                "/subscriptions/{LOCAL_AZURE_SUBSCRIPTION}/resourceGroups/network/providers/Microsoft.Network/\
                 virtualNetworks/canopy/subnets/machines"
            ),
        );
        set("CANOPY_AZURE_SSH_PUBLIC_KEY", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILocalStackOnly canopy");
        set("AZURE_TENANT_ID", LOCAL_AZURE_TENANT);
        set("AZURE_CLIENT_ID", "canopy-local");
        set("AZURE_CLIENT_SECRET", "canopy-local-secret");
        set("AZURE_SUBSCRIPTION_ID", LOCAL_AZURE_SUBSCRIPTION);
    }
    if !openstack.is_empty() {
        set("OS_AUTH_URL", &format!("{openstack}/v3"));
        set("OS_REGION_NAME", "RegionOne");
        set("OS_USERNAME", "canopy");
        set("OS_PASSWORD", "canopy-secret");
        set("OS_PROJECT_NAME", "canopy");
        set("OS_USER_DOMAIN_NAME", "Default");
        set("OS_PROJECT_DOMAIN_NAME", "Default");
    }
    env
}

const LOCAL_AZURE_TENANT: &str = "00000000-0000-0000-0000-00000000c0de";
const LOCAL_AZURE_SUBSCRIPTION: &str = "00000000-0000-0000-0000-0000000ca9e5";
