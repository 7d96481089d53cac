//! The EC2 emulator: moto in server mode with Canopy's fault-control routes
//! (`localstack/moto/`), installed into its own venv on first use.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One emulated instance as the control routes report it.
#[derive(Clone, Debug, Deserialize)]
pub struct EmulatedInstance {
    pub instance_id: String,
    pub region: String,
    pub state: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub user_data: String,
    #[serde(default)]
    pub spot: bool,
}

/// A running emulator. Stopped when dropped.
pub struct Moto {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl Moto {
    /// Installs (idempotently) and starts the emulator on a free loopback port.
    pub async fn start(repo: &Path, log: &Path) -> Result<Moto> {
        let install = Command::new(repo.join("localstack/moto/install.sh"))
            .stderr(Stdio::inherit())
            .output()
            .await
            .context("running localstack/moto/install.sh")?;
        if !install.status.success() {
            bail!("installing the EC2 emulator failed");
        }
        let python = String::from_utf8(install.stdout)?.trim().to_string();
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(&python)
            .arg(repo.join("localstack/moto/canopy_moto.py"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the EC2 emulator with {python}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("ready ") {
                    return Ok(url.trim().to_string());
                }
            }
            bail!("the EC2 emulator exited before it was ready; see {}", log.display())
        })
        .await
        .context("the EC2 emulator did not start in time")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Moto { child, url, http })
    }

    pub async fn instances(&self) -> Result<Vec<EmulatedInstance>> {
        Ok(self.http.get(format!("{}/_canopy/instances", self.url)).send().await?.error_for_status()?.json().await?)
    }

    /// Reclaims a spot instance (or any instance) the way EC2 does.
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
