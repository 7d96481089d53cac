//! Finding and starting Canopy's own binaries.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where `canopy` and `canopy-agent` are: next to the running executable (or one directory up,
/// for test executables under `target/<profile>/deps`).
#[derive(Clone, Debug)]
pub struct Binaries {
    pub canopy: PathBuf,
    pub agent: PathBuf,
}

impl Binaries {
    pub fn find() -> Result<Binaries> {
        let exe = std::env::current_exe()?;
        for dir in exe.ancestors().skip(1).take(2) {
            let canopy = dir.join("canopy");
            let agent = dir.join("canopy-agent");
            if canopy.is_file() && agent.is_file() {
                return Ok(Binaries { canopy, agent });
            }
        }
        bail!("canopy and canopy-agent not found next to {}: run `cargo build --workspace --bins` first", exe.display())
    }
}

/// A running `canopy serve`. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ControlService {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    entry: tokio::sync::watch::Receiver<Option<String>>,
}

impl ControlService {
    /// Starts the control service on `listen` (use port 0 for any) and waits until it answers.
    pub async fn start(
        binaries: &Binaries,
        database_url: &str,
        admin_token: &str,
        listen: &str,
        log: &Path,
        extra_env: &[(&str, &str)],
    ) -> Result<ControlService> {
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(&binaries.canopy)
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("CANOPY_LISTEN", listen)
            .env("CANOPY_ADMIN_TOKEN", admin_token)
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binaries.canopy.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("listening: ") {
                    return Ok(url.to_string());
                }
            }
            bail!("control service exited before listening; see {}", log.display())
        })
        .await
        .with_context(|| format!("control service did not start; see {}", log.display()))??;
        // Keep draining stdout so the service never blocks on a full pipe; the entry point's
        // address, when it has one, comes by on the way.
        let (entry_tx, entry) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("entry: ") {
                    let url = url.trim_end_matches("<team>/<app>/").trim_end_matches('/').to_string();
                    let _ = entry_tx.send(Some(url));
                }
            }
        });
        let service = ControlService { child, url, log: log.to_path_buf(), entry };
        service.wait_healthy(Duration::from_secs(30)).await?;
        Ok(service)
    }

    async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("{}/healthz", self.url)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("control service at {} is not healthy; see {}", self.url, self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The apps' entry point (`http://host:port`), when the service was started with
    /// `CANOPY_ENTRY_LISTEN`; waits a little for the service to print it.
    pub async fn entry_url(&self) -> Option<String> {
        let mut entry = self.entry.clone();
        let found = tokio::time::timeout(Duration::from_secs(10), entry.wait_for(Option::is_some)).await;
        found.ok()?.ok()?.clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Graceful stop: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// Abrupt stop, as in a crash.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}
