//! The `canopy` command line: `serve` starts the control service; the rest are clients.

mod artifacts;
mod client;
mod hosts;
mod policy;
mod provider;
mod providers;
mod reports;
mod table;

pub use client::CliConfig;

use crate::auth::Role;
use crate::controllers::provisioning::{Provisioner, ProvisioningConfig};
use crate::policy::Deployed;
use crate::server::{self, ServeConfig};
use crate::store::{AppDetail, AppSummary, EventRow, MachineRow, NewToken, Store, TeamRow};
use anyhow::{Context, Result, bail};
use canopy_core::spec::AppSpec;
use clap::{Parser, Subcommand, ValueEnum};
use client::Client;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::Table;

#[derive(Parser, Debug)]
#[command(name = "canopy", version, about = "Canopy: one pool over every cloud")]
pub struct Cli {
    /// Control service URL (default from the config file).
    #[arg(long, global = true, env = "CANOPY_API_URL")]
    api_url: Option<String>,
    /// API token (default from the config file).
    #[arg(long, global = true, env = "CANOPY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// The team whose apps to act on (admin tokens only; team tokens always use their own).
    #[arg(long, global = true, env = "CANOPY_TEAM")]
    team: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control service.
    Serve(Box<ServeArgs>),
    /// Fill the database with past metering (machines, tasks, usage) and meter it, so the
    /// reports have history (demo and benchmarks; the rows are over and never acted on).
    SeedHistory(SeedHistoryArgs),
    /// Create or update an app from its app.toml and follow it until it is running.
    Deploy {
        file: PathBuf,
        /// Return as soon as the spec is accepted.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Show what the deploy would do (placement, hourly cost here and on each other
        /// allowed provider, every policy verdict) and store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Why an app runs where it does and what it would cost elsewhere, or why it waits.
    Explain { app: String },
    /// One app's instances, or every app when no name is given.
    Status { app: Option<String> },
    /// List apps.
    Apps,
    /// List machines in the pool.
    Machines,
    /// Print an app instance's log.
    Logs {
        app: String,
        #[arg(long, default_value_t = 0)]
        instance: u32,
        /// Show stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Bytes from the end of the log.
        #[arg(long, default_value_t = 64 * 1024)]
        tail: u64,
        /// Keep printing what the instance writes (across its restarts) until its task ends
        /// or Ctrl-C.
        #[arg(short, long)]
        follow: bool,
    },
    /// Set an app's number of instances.
    Scale { app: String, instances: u32 },
    /// Let a rollout paused after its canary step go on.
    Promote { app: String },
    /// Go back to the last version fully rolled out (or the one before the current), or `--to`.
    Rollback {
        app: String,
        #[arg(long)]
        to: Option<i32>,
    },
    /// Delete an app and stop its tasks.
    Delete { app: String },
    /// Recent events from the audit log.
    Events {
        #[arg(long, default_value_t = 30)]
        limit: u32,
    },
    /// Teams (admin).
    #[command(subcommand)]
    Teams(TeamsCommand),
    /// Bare-metal hosts Canopy powers on through their BMC when the pool needs them.
    #[command(subcommand)]
    Hosts(hosts::HostsCommand),
    /// Finance reports: cost, utilization, savings, budgets.
    #[command(subcommand)]
    Report(reports::ReportCommand),
    /// How each machine's cost is divided among its tasks: show it, or change it (admin).
    CostPolicy {
        /// request, or max-request-usage (per resource, the larger of request and measured use).
        #[arg(long)]
        allocation: Option<String>,
        /// Spread idle cost over the tasks instead of reporting it as idle.
        #[arg(long)]
        share_idle: Option<bool>,
    },
    /// Portability policies: residency, portability, concentration, budget, spot.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The pool's providers; evacuating one (`evacuate NAME [--dry-run | --abort]`).
    #[command(subcommand)]
    Provider(provider::ProviderCommand),
    /// Create an API token (admin); the secret is printed once.
    Token {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        team: Option<String>,
    },
    /// Create a single-use join token for a new machine's agent (admin).
    JoinToken {
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u32,
    },
}

#[derive(Subcommand, Debug)]
enum TeamsCommand {
    List,
    Create { name: String },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "CANOPY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Admin token to create on first start; when unset a random one is printed once.
    #[arg(long, env = "CANOPY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[arg(long, env = "CANOPY_HEARTBEAT_MS", default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Machines silent for longer than this are declared lost.
    #[arg(long, env = "CANOPY_MACHINE_TTL_MS", default_value_t = 6000)]
    machine_ttl_ms: u64,
    /// Where the apps' entry point listens (`http://<address>/<team>/<app>/...` reaches a
    /// healthy instance of the app, in turn); off when unset.
    #[arg(long, env = "CANOPY_ENTRY_LISTEN")]
    entry_listen: Option<String>,
    #[command(flatten)]
    providers: providers::ProviderArgs,
    /// URL new machines' agents reach this control service at (default: the listen address).
    #[arg(long, env = "CANOPY_CONTROL_URL")]
    control_url: Option<String>,
    /// Seconds a new machine's agent has to join before the machine is replaced.
    #[arg(long, env = "CANOPY_BOOT_TIMEOUT_S", default_value_t = 300)]
    boot_timeout_s: u64,
    /// Seconds a bought machine may sit without tasks before it is given back.
    #[arg(long, env = "CANOPY_IDLE_TIMEOUT_S", default_value_t = 300)]
    idle_timeout_s: u64,
    /// Seconds between updates of the cost ledger the reports read.
    #[arg(long, env = "CANOPY_METERING_INTERVAL_S", default_value_t = 60)]
    metering_interval_s: u64,
}

#[derive(clap::Args, Debug)]
struct SeedHistoryArgs {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Days of history, ending two hours ago.
    #[arg(long, default_value_t = 60)]
    days: u32,
    /// Machines running at any time.
    #[arg(long, default_value_t = 40)]
    machines: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not a role (admin, developer, finance)"))
}

pub async fn run(cli: Cli) -> Result<()> {
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Serve(args) => return serve(*args).await,
        Command::SeedHistory(args) => return seed_history(args, json).await,
        _ => {}
    }
    let config = CliConfig::load(&CliConfig::default_path())?;
    let api_url = client::require(cli.api_url.or(config.api_url), "api-url")?;
    let token = client::require(cli.token.or(config.token), "token")?;
    let client = Client::new(api_url, token, cli.team)?;
    match cli.command {
        Command::Serve(_) | Command::SeedHistory(_) => unreachable_serve(),
        Command::Deploy { file, dry_run: true, .. } => policy::dry_run(&client, &file, json).await,
        Command::Deploy { file, no_wait, timeout, dry_run: false } => {
            deploy(&client, &file, no_wait, timeout, json).await
        }
        Command::Explain { app } => policy::explain(&client, &app, json).await,
        Command::Status { app: Some(app) } => {
            let detail: AppDetail = client.get(&format!("/v1/apps/{app}")).await?;
            print(json, &detail, || status_table(&detail))
        }
        Command::Status { app: None } | Command::Apps => {
            let apps: Vec<AppSummary> = client.get("/v1/apps").await?;
            print(json, &apps, || {
                let mut table = Table::new(&["TEAM", "APP", "VERSION", "INSTANCES", "RUNNING", "HEALTHY", "PORTABLE"]);
                for a in &apps {
                    table.row(vec![
                        a.team.clone(),
                        a.name.clone(),
                        a.version.to_string(),
                        a.instances.to_string(),
                        a.running.to_string(),
                        a.healthy.to_string(),
                        if a.portability.is_empty() { "yes" } else { "NO (canopy explain)" }.to_string(),
                    ]);
                }
                table.to_string()
            })
        }
        Command::Machines => {
            let machines: Vec<MachineRow> = client.get("/v1/machines").await?;
            print(json, &machines, || {
                let mut table = Table::new(&[
                    "NAME", "PROVIDER", "REGION", "STATE", "OFFERING", "ZONE", "$/HOUR", "ADDRESS", "CPU", "MEMORY",
                    "TASKS", "CGROUP",
                ]);
                for m in &machines {
                    table.row(vec![
                        m.name.clone(),
                        m.provider.clone(),
                        m.region.clone(),
                        if m.state_reason.is_empty() {
                            m.state.clone()
                        } else {
                            format!("{} ({})", m.state, m.state_reason)
                        },
                        format!("{}{}", m.offering, if m.spot { " spot" } else { "" }),
                        m.zone.clone(),
                        format!("{:.4}", m.price_micros as f64 / 1e6),
                        m.address.clone(),
                        format!("{}/{}m", m.allocated_milli_cpu, m.capacity_milli_cpu),
                        format!("{}/{}Mi", m.allocated_memory >> 20, m.capacity_memory >> 20),
                        m.tasks.to_string(),
                        format!("v{}", m.cgroup_version),
                    ]);
                }
                table.to_string()
            })
        }
        Command::Logs { app, instance, stderr, tail, follow } => {
            let stream = if stderr { "stderr" } else { "stdout" };
            let mut query =
                vec![("instance", instance.to_string()), ("stream", stream.to_string()), ("tail", tail.to_string())];
            if !follow {
                let text = client.get_text(&format!("/v1/apps/{app}/logs"), &query).await?;
                print!("{text}");
                return Ok(());
            }
            query.push(("follow", "true".to_string()));
            let mut response = client.get_stream(&format!("/v1/apps/{app}/logs"), &query).await?;
            let mut stdout = std::io::stdout();
            while let Some(chunk) =
                response.chunk().await.with_context(|| format!("the log stream of {app} was cut"))?
            {
                std::io::Write::write_all(&mut stdout, &chunk)?;
                std::io::Write::flush(&mut stdout)?;
            }
            eprintln!("canopy: the task of {app} instance {instance} has ended; its log is complete");
            Ok(())
        }
        Command::Promote { app } => {
            let detail: AppDetail = client.post(&format!("/v1/apps/{app}/promote"), &serde_json::json!({})).await?;
            print(json, &detail, || format!("{app}: version {} promoted\n", detail.summary.version))
        }
        Command::Rollback { app, to } => {
            let detail: AppDetail =
                client.post(&format!("/v1/apps/{app}/rollback"), &serde_json::json!({"to": to})).await?;
            print(json, &detail, || format!("{app}: {}\n", detail.summary.rollout))
        }
        Command::Scale { app, instances } => {
            let detail: AppDetail =
                client.post(&format!("/v1/apps/{app}/scale"), &serde_json::json!({"instances": instances})).await?;
            print(json, &detail, || format!("{} scaled to {} instances\n", app, detail.summary.instances))
        }
        Command::Delete { app } => {
            client.delete(&format!("/v1/apps/{app}")).await?;
            print(json, &serde_json::json!({"deleted": app}), || format!("{app} deleted; its tasks are stopping\n"))
        }
        Command::Events { limit } => {
            let events: Vec<EventRow> = client.get(&format!("/v1/events?limit={limit}")).await?;
            print(json, &events, || {
                let mut table = Table::new(&["AT", "ACTOR", "KIND", "SUBJECT", "DETAIL"]);
                for e in events.iter().rev() {
                    table.row(vec![
                        e.at.format("%H:%M:%S").to_string(),
                        e.actor.clone(),
                        e.kind.clone(),
                        e.subject.clone(),
                        e.detail.to_string(),
                    ]);
                }
                table.to_string()
            })
        }
        Command::Teams(TeamsCommand::List) => {
            let teams: Vec<TeamRow> = client.get("/v1/teams").await?;
            print(json, &teams, || teams.iter().map(|t| format!("{}\n", t.name)).collect())
        }
        Command::Teams(TeamsCommand::Create { name }) => {
            let team: TeamRow = client.post("/v1/teams", &serde_json::json!({"name": name})).await?;
            print(json, &team, || format!("team {} created\n", team.name))
        }
        Command::Hosts(command) => hosts::run(&client, command, json).await,
        Command::Report(command) => reports::run(&client, command, json).await,
        Command::CostPolicy { allocation, share_idle } => {
            reports::cost_policy(&client, allocation, share_idle, json).await
        }
        Command::Policy(command) => policy::run(&client, command, json).await,
        Command::Provider(command) => provider::run(&client, command, json).await,
        Command::Token { name, role, team } => {
            let token: NewToken =
                client.post("/v1/tokens", &serde_json::json!({"name": name, "role": role, "team": team})).await?;
            print(json, &token, || format!("{}\n", token.token))
        }
        Command::JoinToken { ttl_seconds } => {
            let token: serde_json::Value =
                client.post("/v1/join-tokens", &serde_json::json!({"ttl_seconds": ttl_seconds})).await?;
            print(json, &token, || format!("{}\n", token["token"].as_str().unwrap_or_default()))
        }
    }
}

fn unreachable_serve() -> Result<()> {
    bail!("serve and seed-history are handled before the client is built")
}

fn print<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human());
    }
    Ok(())
}

async fn seed_history(args: SeedHistoryArgs, json: bool) -> Result<()> {
    let store = Store::connect(&args.database_url).await.context("connecting to Postgres")?;
    let config = crate::store::history::HistoryConfig {
        machines: args.machines,
        days: args.days,
        end: chrono::Utc::now() - chrono::Duration::hours(2),
        seed: args.seed,
    };
    let summary = store.seed_history(&config, crate::prices::shipped_catalog(), &crate::prices::owned_rates()).await?;
    print(json, &summary, || {
        format!(
            "seeded {} machines, {} tasks, {} usage rows over {} days; metered {} days\n",
            summary.machines, summary.tasks, summary.usage_rows, args.days, summary.metered_days
        )
    })
}

async fn serve(args: ServeArgs) -> Result<()> {
    let store = Store::connect(&args.database_url).await.context("connecting to Postgres")?;
    if let Some(token) = store.bootstrap_admin(args.admin_token.as_deref()).await? {
        // Printed once, on first start only; it is not stored anywhere in clear.
        println!("admin token (shown once): {token}");
    }
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "control service listening");
    println!("listening: http://{address}");
    let providers = args.providers.connect(&store).await?;
    let config = ProvisioningConfig {
        control_url: args.control_url.clone().unwrap_or_else(|| format!("http://{address}")),
        boot_timeout: Duration::from_secs(args.boot_timeout_s),
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
    };
    let provisioner = Provisioner::new(&store, providers, config).await.context("loading provider offerings")?;
    let provisioner = Some(Arc::new(provisioner));
    let config = ServeConfig {
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
        controllers: crate::controllers::ControllerConfig {
            machine_ttl: Duration::from_millis(args.machine_ttl_ms),
            provisioner,
            metering: Arc::new(crate::controllers::metering::Metering::new(Duration::from_secs(
                args.metering_interval_s,
            ))),
            ..Default::default()
        },
    };
    let entry = match &args.entry_listen {
        Some(address) => {
            let entry = tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
            println!("entry: http://{}/<team>/<app>/", entry.local_addr()?);
            Some(entry)
        }
        None => None,
    };
    server::run(listener, entry, store, config, shutdown_signal()).await?;
    tracing::info!("control service stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

fn status_table(detail: &AppDetail) -> String {
    let s = &detail.summary;
    let mut out = format!(
        "{} (team {}) version {}: {}/{} running, {} healthy\n",
        s.name, s.team, s.version, s.running, s.instances, s.healthy
    );
    if !s.portability.is_empty() {
        out.push_str(&format!("lost its portability: {}\n", s.portability));
    }
    let mut table =
        Table::new(&["INSTANCE", "VERSION", "STATE", "MACHINE", "ENDPOINT", "PID", "HEALTHY", "RESTARTS", "MESSAGE"]);
    for t in &detail.tasks {
        table.row(vec![
            t.instance.to_string(),
            t.version.to_string(),
            if t.desired == "stop" && !matches!(t.state.as_str(), "stopped" | "lost") {
                format!("{} (stopping)", t.state)
            } else {
                t.state.clone()
            },
            t.machine.clone().unwrap_or_else(|| "-".into()),
            endpoint(t).unwrap_or_else(|| "-".into()),
            t.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            t.healthy.map(|h| if h { "yes" } else { "no" }.to_string()).unwrap_or_else(|| "-".into()),
            t.restarts.to_string(),
            t.message.clone(),
        ]);
    }
    out.push_str(&table.to_string());
    out
}

/// `http://address:port` of a task's first port.
pub fn endpoint(task: &crate::store::TaskRow) -> Option<String> {
    let port = task.ports.as_object()?.values().next()?.as_u64()?;
    Some(format!("http://{}:{port}", task.address.as_deref()?))
}

/// Applies the spec, then follows the rollout until every instance of the new version runs
/// and is healthy, a task fails, or the timeout passes.
/// Follows a job until it ends; fails when the job fails.
async fn follow_job(client: &Client, path: &str, name: &str, timeout: u64, json: bool) -> Result<()> {
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        let detail: AppDetail = client.get(path).await?;
        let line = format!("{name}: {} {}", detail.summary.job_state, detail.summary.job_message);
        if line != last_line && !json {
            println!("{}", line.trim_end());
            last_line = line;
        }
        match detail.summary.job_state.as_str() {
            // A scheduled job starts runs of its own (`canopy apps` lists them as <name>-<time>).
            "succeeded" | "scheduled" => return print(json, &detail, String::new),
            "failed" => bail!("job {name} failed: {}", detail.summary.job_message),
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(timeout) {
            bail!("job {name} did not finish within {timeout}s (it goes on: `canopy status {name}`)");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads and validates an app.toml locally, so a mistake is named before anything is sent.
fn read_spec(file: &std::path::Path) -> Result<AppSpec> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    AppSpec::from_toml(&text).with_context(|| format!("{} is not a valid app spec", file.display()))
}

async fn deploy(client: &Client, file: &std::path::Path, no_wait: bool, timeout: u64, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let text = artifacts::upload_local(client, file, &text, json).await?;
    let spec = AppSpec::from_toml(&text).with_context(|| format!("{} is not a valid app spec", file.display()))?;
    let path = format!("/v1/apps/{}", spec.name);
    let Deployed { app: applied, warnings } = client.put(&path, &spec).await?;
    let version = applied.summary.version;
    if !json {
        println!("{} version {version} accepted ({} instances)", spec.name, spec.instances);
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if no_wait {
        return print(json, &applied, String::new);
    }
    if spec.job.is_some() {
        return follow_job(client, &path, &spec.name, timeout, json).await;
    }
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        let detail: AppDetail = client.get(&path).await?;
        if detail.summary.version != version {
            bail!("{}: {} (now at version {})", spec.name, detail.summary.rollout, detail.summary.version);
        }
        if detail.summary.rollout.starts_with("paused") {
            if !json {
                println!("{}: {}", spec.name, detail.summary.rollout);
            }
            return print(json, &detail, String::new);
        }
        let current: Vec<_> = detail.tasks.iter().filter(|t| t.version == version && t.desired == "run").collect();
        let healthy: Vec<_> = current
            .iter()
            .filter(|t| {
                t.state == "running"
                    && t.healthy != Some(false)
                    && (t.healthy.is_some() || detail.spec.health.is_none())
            })
            .collect();
        let old = detail.tasks.iter().filter(|t| t.version != version && t.state == "running").count();
        // What a task not started yet is doing: waiting for a machine, fetching, pulling.
        let waiting = current
            .iter()
            .find(|t| matches!(t.state.as_str(), "pending" | "assigned") && !t.message.is_empty())
            .map(|t| format!(" (instance {}: {})", t.instance, t.message))
            .unwrap_or_default();
        let line = format!(
            "{}: {}/{} instances running and healthy, {} pending{}{waiting}",
            spec.name,
            healthy.len(),
            detail.summary.instances,
            current.iter().filter(|t| matches!(t.state.as_str(), "pending" | "assigned")).count(),
            if old > 0 { format!(", {old} of the previous version still serving") } else { String::new() }
        );
        if line != last_line && !json {
            println!("{line}");
            last_line = line;
        }
        if let Some(failed) = current.iter().find(|t| t.state == "failed") {
            bail!("instance {} failed: {}", failed.instance, failed.message);
        }
        let old_running = detail.tasks.iter().any(|t| t.version != version && t.state == "running");
        if healthy.len() as i32 >= detail.summary.instances && !old_running {
            if json {
                return print(json, &detail, String::new);
            }
            for task in healthy {
                if let Some(url) = endpoint(task) {
                    println!("  instance {} on {}: {url}", task.instance, task.machine.as_deref().unwrap_or("-"));
                }
            }
            println!("{} version {version} is running", spec.name);
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(timeout) {
            let reason = current
                .iter()
                .find(|t| !t.message.is_empty())
                .map(|t| t.message.clone())
                .unwrap_or_else(|| "instances did not become healthy".into());
            bail!("{} did not finish deploying within {timeout}s: {reason}", spec.name);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
