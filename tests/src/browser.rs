//! A real browser for the web UI's tests: Debian's `chromium`, headless, with a temporary
//! profile, reaching the control service through a small proxy of this process that adds the
//! test's session cookie to each request (a browser started from the command line has no way
//! to be given a cookie; the proxy is how the signed-in session reaches it).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long one chromium run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Browser {
    proxy: String,
    profile: PathBuf,
    proxy_task: tokio::task::JoinHandle<()>,
}

impl Browser {
    /// A browser that reaches `upstream` (`host:port`, the only address its proxy serves)
    /// with `cookie` (`name=value`) on every request.
    pub async fn start(upstream: &str, cookie: &str, profile: &Path) -> Result<Browser> {
        which_chromium()?;
        std::fs::create_dir_all(profile)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = listener.local_addr()?.to_string();
        let (upstream, cookie) = (upstream.to_string(), cookie.to_string());
        let proxy_task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, cookie) = (upstream.clone(), cookie.clone());
                tokio::spawn(async move {
                    if let Err(error) = forward(client, &upstream, &cookie).await {
                        eprintln!("browser proxy: {error:#}");
                    }
                });
            }
        });
        Ok(Browser { proxy, profile: profile.to_path_buf(), proxy_task })
    }

    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("chromium");
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .arg(format!("--proxy-server=http://{}", self.proxy))
            // Chromium sends loopback addresses past any proxy unless told otherwise.
            .arg("--proxy-bypass-list=<-loopback>")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// The page at `url` as the browser built it (`--dump-dom`).
    pub async fn dump_dom(&self, url: &str) -> Result<String> {
        let mut command = self.command();
        command.arg("--dump-dom").arg(url).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
        let output =
            tokio::time::timeout(RUN_TIMEOUT, command.output()).await.context("chromium --dump-dom timed out")??;
        if !output.status.success() {
            bail!("chromium --dump-dom {url} failed: {}", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Saves a screenshot of the page at `url` to `path` (PNG).
    pub async fn screenshot(&self, url: &str, path: &Path, size: (u32, u32)) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let mut command = self.command();
        command
            .arg(format!("--screenshot={}", path.display()))
            .arg(format!("--window-size={},{}", size.0, size.1))
            .arg("--hide-scrollbars")
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let status =
            tokio::time::timeout(RUN_TIMEOUT, command.status()).await.context("chromium --screenshot timed out")??;
        if !status.success() || !path.is_file() {
            bail!("chromium --screenshot {url} failed ({status}); no {}", path.display());
        }
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.proxy_task.abort();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn which_chromium() -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("chromium").is_file()))
        .unwrap_or(false);
    if !found {
        bail!("chromium is not installed: run `scripts/setup.sh test` (make test does)");
    }
    Ok(())
}

/// Passes one proxied request on to `upstream` with `cookie` (and no other cookie) and
/// `Connection: close`, then the answer back. Requests for any other host are refused.
async fn forward(mut client: TcpStream, upstream: &str, cookie: &str) -> Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            bail!("request head too large");
        }
    }
    let head = String::from_utf8(head).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(rest) = target.strip_prefix(&format!("http://{upstream}")) else {
        client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
        return Ok(());
    };
    let path = if rest.is_empty() { "/" } else { rest };
    let mut request = format!("{method} {path} {version}\r\n");
    let mut body_length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        if matches!(name.as_str(), "cookie" | "connection" | "proxy-connection" | "keep-alive") {
            continue;
        }
        if name == "content-length" {
            body_length = line.split(':').nth(1).unwrap_or("0").trim().parse().unwrap_or(0);
        }
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Cookie: {cookie}\r\nConnection: close\r\n\r\n"));
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(request.as_bytes()).await?;
    if body_length > 0 {
        let mut body = vec![0u8; body_length];
        client.read_exact(&mut body).await?;
        server.write_all(&body).await?;
    }
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await?;
    client.write_all(&answer).await?;
    client.shutdown().await?;
    Ok(())
}
