//! Health checks: http, tcp and command probes, run by the agent next to its tasks.

use canopy_core::spec::{HealthCheck, ProbeKind};
use std::collections::BTreeMap;
use std::time::Duration;

/// Runs one probe; `Ok(())` is healthy, the error says why not. A command probe runs behind
/// `wrap` (the OCI runtime's `exec` into an image task's container) when it is not empty.
pub async fn probe(
    check: &HealthCheck,
    address: &str,
    ports: &BTreeMap<String, u16>,
    client: &reqwest::Client,
    wrap: &[String],
) -> Result<(), String> {
    let timeout = check.timeout.as_std();
    let port = || {
        let port = match &check.port {
            Some(name) => ports.get(name),
            None => ports.values().next(),
        };
        port.copied().ok_or_else(|| "no port allocated for the health check".to_string())
    };
    match check.kind {
        ProbeKind::Http => {
            let path = check.path.as_deref().unwrap_or("/");
            let url = format!("http://{address}:{}{path}", port()?);
            let response = client.get(&url).timeout(timeout).send().await.map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("GET {url} answered {status}"))
            }
        }
        ProbeKind::Tcp => {
            let target = format!("{address}:{}", port()?);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {target}: {e}")),
                Err(_) => Err(format!("connect {target}: timed out")),
            }
        }
        ProbeKind::Command => {
            let argv: Vec<String> = wrap.iter().chain(check.command.iter().flatten()).cloned().collect();
            let (program, args) = argv.split_first().ok_or("empty health command")?;
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("{program}: {e}"))?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) if status.success() => Ok(()),
                Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
                Ok(Err(e)) => Err(format!("{program}: {e}")),
                Err(_) => Err(format!("{program} timed out")),
            }
        }
    }
}

/// The delay before the next probe.
pub fn interval(check: &HealthCheck) -> Duration {
    check.interval.as_std()
}
