//! `canopy-localstack demo`: the whole of Canopy on this machine, until Ctrl-C.

use anyhow::{Context, Result, bail};
use canopy_core::Resources;
use canopy_localstack::{Binaries, ControlService, LocalMachine, MachineSpec, TempDatabase};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "canopy-localstack", about = "Canopy's local stack")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Postgres-backed control service, three local machines with agents, and deploy the
    /// sample app; run until Ctrl-C, which stops everything this started.
    Demo {
        /// PostgreSQL server URL (the demo creates its own database there).
        #[arg(long, env = "CANOPY_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        database_url: String,
        /// Control service address; falls back to a free port when taken.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        #[arg(long, default_value_t = 3)]
        machines: u8,
        /// Where the demo keeps machines' state and logs.
        #[arg(long, default_value = ".canopy/demo")]
        state_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().command {
        Command::Demo { database_url, listen, machines, state_dir } => {
            demo(&database_url, &listen, machines, &state_dir).await
        }
    }
}

async fn demo(server_url: &str, listen: &str, machine_count: u8, state_dir: &std::path::Path) -> Result<()> {
    let binaries = Binaries::find()?;
    let repo = std::env::current_dir()?;
    let state_dir = repo.join(state_dir);
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).with_context(|| format!("cleaning {}", state_dir.display()))?;
    }
    std::fs::create_dir_all(&state_dir)?;
    let database = TempDatabase::create(server_url, "canopy_demo").await?.keep();
    let admin_token = random_token()?;
    let listen = match std::net::TcpListener::bind(listen) {
        Ok(_) => listen.to_string(),
        Err(_) => "127.0.0.1:0".to_string(),
    };
    let mut control =
        ControlService::start(&binaries, &database.url, &admin_token, &listen, &state_dir.join("control.log"), &[])
            .await?;
    let api = Api { http: reqwest::Client::new(), url: control.url.clone(), token: admin_token.clone() };

    api.post("/v1/teams", serde_json::json!({"name": "demo"})).await?;
    let developer = api
        .post("/v1/tokens", serde_json::json!({"name": "demo-developer", "role": "developer", "team": "demo"}))
        .await?;
    let developer_token = developer["token"].as_str().context("no token")?.to_string();
    let config_path = write_cli_config(&control.url, &developer_token)?;

    let mut machines = Vec::new();
    for n in 1..=machine_count {
        let join = api.post("/v1/join-tokens", serde_json::json!({})).await?;
        let spec = MachineSpec {
            name: format!("bm-{n}"),
            address: format!("127.0.1.{n}"),
            capacity: Resources::new(1000, 1 << 30),
            labels: BTreeMap::from([("provider".into(), "baremetal".into()), ("zone".into(), format!("local-{n}"))]),
        };
        let dir = state_dir.join(&spec.name);
        let token = join["token"].as_str().context("no join token")?;
        machines.push(
            LocalMachine::start(&binaries, spec, std::path::Path::new("canopy-demo"), &dir, &control.url, token)
                .await?,
        );
    }
    wait_for_machines(&api, machine_count as usize).await?;

    // The sample app's script ships in the repo; point its spec at this checkout's copy.
    let spec = std::fs::read_to_string(repo.join("examples/hello/app.toml")).context("examples/hello/app.toml")?;
    let spec_path = state_dir.join("hello.toml");
    std::fs::write(
        &spec_path,
        spec.replace("\"examples/hello/hello.py\"", &format!("{:?}", repo.join("examples/hello/hello.py"))),
    )?;
    let status = tokio::process::Command::new(&binaries.canopy)
        .arg("deploy")
        .arg(&spec_path)
        .env("CANOPY_CONFIG", &config_path)
        .status()
        .await?;
    if !status.success() {
        bail!("deploying the sample app failed; logs are in {}", state_dir.display());
    }
    let app = api.get("/v1/apps/hello?team=demo").await?;
    let client = reqwest::Client::new();
    for task in app["tasks"].as_array().into_iter().flatten().filter(|t| t["state"] == "running") {
        let (Some(address), Some(port)) = (task["address"].as_str(), task["ports"]["http"].as_u64()) else { continue };
        let url = format!("http://{address}:{port}/");
        let started = Instant::now();
        while !client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{url} does not answer");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("ready: {url}");
    }
    println!("api: {}", control.url);
    println!();
    println!("The CLI is configured ({}) as a developer of team demo. Try:", config_path.display());
    println!("  target/debug/canopy status hello");
    println!("  target/debug/canopy machines --output json");
    println!("  target/debug/canopy scale hello 3");
    println!("  target/debug/canopy logs hello");
    println!("Admin token: {admin_token}   Logs: {}", state_dir.display());
    println!("Ctrl-C stops everything the demo started.");

    shutdown_signal().await;
    println!("stopping...");
    drop(machines);
    // The machines' common parent slice is empty now.
    let _ = canopy_agent::cgroup::Cgroups::detect()
        .map(|cgroups| cgroups.open(std::path::Path::new("canopy-demo")).kill_tree());
    control.stop(Duration::from_secs(5)).await;
    Ok(())
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let response =
            self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.token).json(&body).send().await?;
        if !response.status().is_success() {
            bail!("POST {path}: {} {}", response.status(), response.text().await.unwrap_or_default());
        }
        Ok(response.json().await?)
    }

    async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let response = self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await?;
        if !response.status().is_success() {
            bail!("GET {path}: {}", response.status());
        }
        Ok(response.json().await?)
    }
}

async fn wait_for_machines(api: &Api, count: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let machines = api.get("/v1/machines").await?;
        let ready = machines.as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "ready").count());
        if ready >= count {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("only {ready} of {count} machines joined");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("cnp_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Writes the CLI config so `canopy` in another shell talks to this demo.
fn write_cli_config(api_url: &str, token: &str) -> Result<PathBuf> {
    let path = std::env::var_os("CANOPY_CONFIG").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        home.join(".config/canopy/config.toml")
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, format!("api_url = {api_url:?}\ntoken = {token:?}\n"))?;
    Ok(path)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
