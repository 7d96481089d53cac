//! `canopy-localstack demo`: the whole of Canopy on this machine, until Ctrl-C.

use anyhow::{Context, Result, bail};
use canopy_localstack::booter::{self, Booter};
use canopy_localstack::emulator::{Emulator, Kind};
use canopy_localstack::{Binaries, ControlService, TempDatabase};
use clap::{Parser, Subcommand};
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "canopy-localstack", about = "Canopy's local stack")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the emulated clouds (EC2, Azure, OpenStack, Redfish bare metal) and the booter, in
    /// the foreground until Ctrl-C.
    Up {
        #[arg(long, default_value = ".canopy/localstack")]
        state_dir: PathBuf,
    },
    /// Show whether the local stack started by `up` is running, and its instances.
    Status,
    /// Stop the local stack started by `up`.
    Down,
    /// Start the emulated clouds, the control service on Postgres, and deploy the sample app,
    /// for which Canopy buys machines that boot real agents; run until Ctrl-C, which stops
    /// everything this started.
    Demo {
        /// PostgreSQL server URL (the demo creates its own database there).
        #[arg(long, env = "CANOPY_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        database_url: String,
        /// Control service address; falls back to a free port when taken.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
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
        Command::Demo { database_url, listen, state_dir } => demo(&database_url, &listen, &state_dir).await,
        Command::Up { state_dir } => up(&state_dir).await,
        Command::Status => status().await,
        Command::Down => down(),
    }
}

/// Where `up` records what it started, for `status` and `down`.
const STACK_FILE: &str = ".canopy/localstack.json";

/// The emulated clouds and the booter, until `stop` resolves.
struct LocalStack {
    emulators: Vec<Arc<Emulator>>,
    booter: Arc<Booter>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalStack {
    async fn start(repo: &Path, binaries: &Binaries, state_dir: &Path) -> Result<LocalStack> {
        std::fs::create_dir_all(state_dir)?;
        let mut emulators = Vec::new();
        for kind in CLOUDS {
            let log = state_dir.join(format!("{}.log", kind.name()));
            emulators.push(Arc::new(Emulator::start(kind, repo, &log, &emulator_args(kind)).await?));
        }
        let cgroup_root = PathBuf::from(format!("canopy-localstack-{}", std::process::id()));
        let booter = Arc::new(Booter::new(&binaries.agent, &cgroup_root, &state_dir.join("machines"))?);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(booter::run(booter.clone(), emulators.clone(), Duration::from_millis(250), stop_rx));
        Ok(LocalStack { emulators, booter, stop, task })
    }

    fn url(&self, kind: Kind) -> &str {
        self.emulators.iter().find(|e| e.kind == kind).map_or("", |e| e.url.as_str())
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.booter.shutdown();
        for emulator in self.emulators {
            if let Ok(mut emulator) = Arc::try_unwrap(emulator) {
                emulator.stop().await;
            }
        }
    }
}

/// The emulated clouds the local stack runs.
const CLOUDS: [Kind; 4] = Kind::ALL;

/// What each emulated cloud holds in the demo.
fn emulator_args(kind: Kind) -> Vec<String> {
    match kind {
        Kind::Aws | Kind::Azure => Vec::new(),
        // A small private cloud: room for two servers in the demo project.
        Kind::OpenStack => vec!["--max-instances".into(), "2".into()],
        // Two owned hosts in the rack.
        Kind::BareMetal => vec!["--systems".into(), "2".into()],
    }
}

async fn up(state_dir: &Path) -> Result<()> {
    let repo = std::env::current_dir()?;
    let stack = LocalStack::start(&repo, &Binaries::find()?, &repo.join(state_dir)).await?;
    let mut record = serde_json::json!({"pid": std::process::id()});
    for emulator in &stack.emulators {
        record[emulator.kind.name()] = emulator.url.clone().into();
        println!("{}: {}", emulator.kind.name(), emulator.url);
    }
    std::fs::write(STACK_FILE, serde_json::to_vec(&record)?)?;
    println!("booter: running; Ctrl-C (or `canopy-localstack down`) stops the local stack");
    shutdown_signal().await;
    stack.stop().await;
    let _ = std::fs::remove_file(STACK_FILE);
    Ok(())
}

fn read_stack_file() -> Result<serde_json::Value> {
    let text = std::fs::read(STACK_FILE)
        .with_context(|| format!("no local stack recorded in {STACK_FILE}: run `canopy-localstack up`"))?;
    Ok(serde_json::from_slice(&text)?)
}

async fn status() -> Result<()> {
    let stack = read_stack_file()?;
    println!("local stack: pid {}", stack["pid"]);
    for kind in Kind::ALL {
        let Some(url) = stack[kind.name()].as_str() else { continue };
        let instances: serde_json::Value =
            reqwest::get(format!("{url}/_canopy/instances")).await?.error_for_status()?.json().await?;
        println!("{}: {url}", kind.name());
        for instance in instances.as_array().into_iter().flatten() {
            println!(
                "  {} {} {} {}",
                instance["instance_id"], instance["instance_type"], instance["availability_zone"], instance["state"]
            );
        }
    }
    Ok(())
}

fn down() -> Result<()> {
    let stack = read_stack_file()?;
    let pid = stack["pid"].as_i64().context("pid")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
        let _ = std::fs::remove_file(STACK_FILE);
        bail!("the local stack (pid {pid}) is not running");
    }
    println!("stopping the local stack (pid {pid})");
    Ok(())
}

async fn demo(server_url: &str, listen: &str, state_dir: &std::path::Path) -> Result<()> {
    let binaries = Binaries::find()?;
    let repo = std::env::current_dir()?;
    let state_dir = repo.join(state_dir);
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).with_context(|| format!("cleaning {}", state_dir.display()))?;
    }
    std::fs::create_dir_all(&state_dir)?;
    println!("starting the emulated clouds (the first run installs moto and sushy-tools into .canopy/)...");
    let stack = LocalStack::start(&repo, &binaries, &state_dir.join("localstack")).await?;
    let database = TempDatabase::create(server_url, "canopy_demo").await?.keep();
    seed_history(&binaries, &database.url).await?;
    let admin_token = random_token()?;
    let listen = match std::net::TcpListener::bind(listen) {
        Ok(_) => listen.to_string(),
        Err(_) => "127.0.0.1:0".to_string(),
    };
    let mut provider_env = canopy_localstack::emulator::control_env(
        &repo,
        stack.url(Kind::Aws),
        stack.url(Kind::Azure),
        stack.url(Kind::OpenStack),
    );
    provider_env.extend([
        ("CANOPY_BOOT_TIMEOUT_S".to_string(), "60".to_string()),
        ("CANOPY_IDLE_TIMEOUT_S".to_string(), "60".to_string()),
        ("CANOPY_ENTRY_LISTEN".to_string(), "127.0.0.1:0".to_string()),
    ]);
    let provider_env: Vec<(&str, &str)> = provider_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut control = ControlService::start(
        &binaries,
        &database.url,
        &admin_token,
        &listen,
        &state_dir.join("control.log"),
        &provider_env,
    )
    .await?;
    let api = Api { http: reqwest::Client::new(), url: control.url.clone(), token: admin_token.clone() };

    api.post("/v1/teams", serde_json::json!({"name": "demo"})).await?;
    let developer = api
        .post("/v1/tokens", serde_json::json!({"name": "demo-developer", "role": "developer", "team": "demo"}))
        .await?;
    let developer_token = developer["token"].as_str().context("no token")?.to_string();
    let finance = api
        .post("/v1/tokens", serde_json::json!({"name": "payments-finance", "role": "finance", "team": "payments"}))
        .await?;
    let finance_token = finance["token"].as_str().context("no token")?.to_string();
    let config_path = write_cli_config(&control.url, &developer_token)?;

    register_hosts(&api, &stack).await?;

    // Six instances of hello: the two owned hosts and the two servers the private cloud's
    // quota allows come first (already paid for), then the cheapest cloud machines. hello-eu
    // may only run in westeurope, which only Azure sells here.
    deploy(&binaries, &repo, &state_dir, &config_path, "hello", Some(6)).await?;
    deploy(&binaries, &repo, &state_dir, &config_path, "hello-eu", None).await?;
    for app in ["hello", "hello-eu"] {
        print_ready(&api, app).await?;
    }
    if let Some(entry) = control.entry_url().await {
        println!("entry: {entry}/demo/hello/   (one URL for all of hello's instances, in turn)");
    }
    println!("api: {}", control.url);
    println!("ui: {}/ui/", control.url);
    println!();
    println!("The CLI is configured ({}) as a developer of team demo. Try:", config_path.display());
    println!("  target/debug/canopy status hello");
    println!("  target/debug/canopy machines            # provider, region, offering and price of each");
    println!("  target/debug/canopy machines --output json");
    println!("  target/debug/canopy scale hello 8      # more than the pool holds: Canopy buys more");
    println!("  target/debug/canopy logs hello");
    for emulator in &stack.emulators {
        println!("Emulated {}: {}", emulator.kind.name(), emulator.url);
    }
    println!("Sign in to the web UI with a token: the admin's, the developer's (in the CLI config), or");
    println!("  finance of team payments (seeded history; reports only): {finance_token}");
    println!("Admin token: {admin_token}   Logs: {}", state_dir.display());
    println!("Ctrl-C stops everything the demo started.");

    shutdown_signal().await;
    println!("stopping...");
    control.stop(Duration::from_secs(5)).await;
    stack.stop().await;
    Ok(())
}

/// Fills the demo's database with two months of past metering (`canopy seed-history`: teams,
/// apps and jobs on machines of all four providers), so the web UI's cost pages and the reports
/// have history to show beside what the demo's own machines accrue.
async fn seed_history(binaries: &Binaries, database_url: &str) -> Result<()> {
    println!("seeding 60 days of metering history (canopy seed-history)...");
    let status = tokio::process::Command::new(&binaries.canopy)
        .args(["seed-history", "--days", "60", "--machines", "40"])
        .env("DATABASE_URL", database_url)
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("canopy seed-history failed ({status})");
    }
    Ok(())
}

/// Registers the emulated rack's hosts (powered off, behind a Redfish BMC) as owned capacity.
async fn register_hosts(api: &Api, stack: &LocalStack) -> Result<()> {
    let Some(redfish) = stack.emulators.iter().find(|e| e.kind == Kind::BareMetal) else { return Ok(()) };
    for system in redfish.instances().await? {
        let name = format!("rack1-{}", system.name.as_deref().unwrap_or(&system.instance_id));
        api.post(
            "/v1/hosts",
            serde_json::json!({
                "name": name,
                "bmc_url": redfish.url,
                "bmc_username": "admin",
                "bmc_password": "password",
                "system_id": system.instance_id,
                "cpus": system.vcpus.unwrap_or(2),
                "memory": format!("{}Mi", system.memory_mib.unwrap_or(4096)),
                "labels": {"rack": "rack1"},
            }),
        )
        .await?;
    }
    Ok(())
}

/// Deploys `examples/<app>/app.toml` with `canopy deploy`, pointing it at this checkout's
/// copy of the sample app's script, and waits until it runs.
async fn deploy(
    binaries: &Binaries,
    repo: &Path,
    state_dir: &Path,
    config_path: &Path,
    app: &str,
    instances: Option<u32>,
) -> Result<()> {
    let file = format!("examples/{app}/app.toml");
    let mut spec = std::fs::read_to_string(repo.join(&file)).with_context(|| file.clone())?;
    spec = spec.replace("\"examples/hello/hello.py\"", &format!("{:?}", repo.join("examples/hello/hello.py")));
    if let Some(instances) = instances {
        spec = spec
            .lines()
            .map(
                |l| if l.starts_with("instances = ") { format!("instances = {instances}\n") } else { format!("{l}\n") },
            )
            .collect();
    }
    let spec_path = state_dir.join(format!("{app}.toml"));
    std::fs::write(&spec_path, spec)?;
    println!("deploying {file}...");
    let status = tokio::process::Command::new(&binaries.canopy)
        .arg("deploy")
        .arg(&spec_path)
        .env("CANOPY_CONFIG", config_path)
        .status()
        .await?;
    if !status.success() {
        bail!("deploying {app} failed; logs are in {}", state_dir.display());
    }
    Ok(())
}

/// Prints `ready: <url>` for each running instance of `app` once it answers.
async fn print_ready(api: &Api, app: &str) -> Result<()> {
    let detail = api.get(&format!("/v1/apps/{app}?team=demo")).await?;
    let machines = api.get("/v1/machines").await?;
    let client = reqwest::Client::new();
    // One per instance: the running task on a machine that stays (a task being moved has a
    // successor elsewhere).
    let mut seen = std::collections::BTreeSet::new();
    for task in detail["tasks"].as_array().into_iter().flatten().filter(|t| t["state"] == "running") {
        let machine = machines.as_array().and_then(|m| m.iter().find(|m| m["name"] == task["machine"]));
        if machine.is_some_and(|m| m["state"] != "ready") || !seen.insert(task["instance"].to_string()) {
            continue;
        }
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
        if let Some(m) = machine {
            let field = |key: &str| m[key].as_str().unwrap_or_default().to_string();
            println!("       {app} on {} {} {}", field("provider"), field("region"), field("offering"));
        }
    }
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
