//! `canopy provider`: the pool's providers, and evacuating one: `--dry-run` shows the plan,
//! without it the evacuation starts (or, already under way, is followed) until it is done;
//! `--abort` stops it (or lifts a completed one).

use super::client::Client;
use super::print;
use super::table::Table;
use crate::store::{EvacuationPlanView, EvacuationView, ProviderRow};
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum ProviderCommand {
    /// Providers in the pool: machines, tasks, cost per hour, and any evacuation's progress.
    Status { name: Option<String> },
    /// Move every workload off a provider and give its machines back (admin).
    Evacuate(EvacuateArgs),
}

#[derive(clap::Args, Debug)]
pub struct EvacuateArgs {
    name: String,
    /// Only show the plan: moves, machines bought and given back, cost before and after, and
    /// an estimated duration. Changes nothing.
    #[arg(long, conflicts_with = "abort")]
    dry_run: bool,
    /// Stop the evacuation: what already moved stays, the rest stays where it is, and the
    /// provider takes work again (for a completed evacuation: lift it).
    #[arg(long)]
    abort: bool,
    /// How long a job's task may run on a drained machine before it is re-queued elsewhere,
    /// e.g. 10m (the default) or 0s.
    #[arg(long, value_name = "DURATION")]
    batch_grace: Option<String>,
    /// Return once the evacuation has started.
    #[arg(long, conflicts_with_all = ["dry_run", "abort"])]
    no_wait: bool,
    /// Stop following after this many seconds (the evacuation goes on).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

pub async fn run(client: &Client, command: ProviderCommand, json: bool) -> Result<()> {
    match command {
        ProviderCommand::Status { name } => {
            let mut providers: Vec<ProviderRow> = client.get("/v1/providers").await?;
            if let Some(name) = &name {
                providers.retain(|p| &p.name == name);
                if providers.is_empty() {
                    bail!("no provider {name:?} in the pool");
                }
            }
            print(json, &providers, || providers_table(&providers))
        }
        ProviderCommand::Evacuate(args) => evacuate(client, args, json).await,
    }
}

async fn evacuate(client: &Client, args: EvacuateArgs, json: bool) -> Result<()> {
    let path = format!("/v1/providers/{}/evacuation", args.name);
    if args.abort {
        client.delete(&path).await?;
        let ended: EvacuationView = client.get(&path).await?;
        return print(json, &ended, || {
            format!(
                "evacuation of {} {}: {} machine(s) and {} task(s) stay on it; it takes work again\n",
                ended.provider,
                ended.state,
                ended.machines_left,
                ended.remaining.len()
            )
        });
    }
    let body = serde_json::json!({"dry_run": args.dry_run, "batch_grace": args.batch_grace});
    if args.dry_run {
        let plan: EvacuationPlanView = client.post(&path, &body).await?;
        return print(json, &plan, || plan_text(&plan));
    }
    // One under way is followed rather than started again.
    let current: Option<EvacuationView> = match client.get::<EvacuationView>(&path).await {
        Ok(view) if view.state == "running" => Some(view),
        _ => None,
    };
    let started = match current {
        Some(view) => view,
        None => {
            let view: EvacuationView = client.post(&path, &body).await?;
            if !json {
                print!("{}", plan_text(&view.plan));
                println!("evacuation of {} started", view.provider);
            }
            view
        }
    };
    if args.no_wait {
        return print(json, &started, String::new);
    }
    follow(client, &path, args.timeout, json).await
}

/// Prints progress whenever it changes, until the evacuation ends.
async fn follow(client: &Client, path: &str, timeout: u64, json: bool) -> Result<()> {
    let begun = Instant::now();
    let mut last = String::new();
    loop {
        let view: EvacuationView = client.get(path).await?;
        let line = progress(&view);
        if line != last && !json {
            println!("{line}");
            last = line;
        }
        match view.state.as_str() {
            "completed" => {
                return print(json, &view, || {
                    format!(
                        "{} evacuated: {} machine(s) given back; ${}/hour -> ${}/hour\n",
                        view.provider,
                        view.plan.releases.len(),
                        dollars(view.plan.cost_before_micros),
                        dollars(view.plan.cost_after_micros)
                    )
                });
            }
            "running" => {}
            other => bail!("the evacuation of {} was {other}", view.provider),
        }
        if begun.elapsed() > Duration::from_secs(timeout) {
            bail!(
                "the evacuation of {} is not done after {timeout}s (it goes on: `canopy provider status {}`)",
                view.provider,
                view.provider
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One line: the wave, the machines and tasks left, and what the first waiting task waits for.
fn progress(view: &EvacuationView) -> String {
    let mut line = format!(
        "{}: {}, wave {}/{}, {} machine(s) left ({} draining), {} task(s) to move",
        view.provider,
        view.state,
        view.waves_started,
        view.plan.waves,
        view.machines_left,
        view.machines_draining,
        view.remaining.iter().filter(|t| t.desired == "run").count()
    );
    if let Some(waiting) = view.remaining.iter().find(|t| t.successor_message.as_deref().is_some_and(|m| !m.is_empty()))
    {
        line.push_str(&format!(
            "; {} instance {}: {}",
            waiting.app,
            waiting.instance,
            waiting.successor_message.as_deref().unwrap_or_default()
        ));
    }
    line
}

fn plan_text(plan: &EvacuationPlanView) -> String {
    let mut out = format!(
        "evacuating {}: {} move(s) in {} wave(s), about {} (boot {}s)\nhourly cost: ${} -> ${}\n",
        plan.provider,
        plan.moves.len(),
        plan.waves,
        duration(plan.estimated_seconds),
        plan.boot_seconds,
        dollars(plan.cost_before_micros),
        dollars(plan.cost_after_micros)
    );
    if !plan.purchases.is_empty() {
        out.push_str("\nbought first:\n");
        let mut table = Table::new(&["NEW", "PROVIDER", "REGION", "ZONE", "OFFERING", "$/HOUR", "TASKS"]);
        for p in &plan.purchases {
            table.row(vec![
                format!("#{}", p.number),
                p.provider.clone(),
                p.region.clone(),
                p.zone.clone(),
                format!("{}{}", p.instance_type, if p.spot { " spot" } else { "" }),
                dollars(p.price_micros),
                p.tasks.to_string(),
            ]);
        }
        out.push_str(&table.to_string());
    }
    if !plan.moves.is_empty() {
        out.push_str("\nmoves:\n");
        let mut table = Table::new(&["APP", "INSTANCE", "KIND", "FROM", "TO", "PROVIDER"]);
        for m in &plan.moves {
            table.row(vec![
                m.app.clone(),
                m.instance.to_string(),
                m.kind.clone(),
                m.from.clone(),
                m.to.clone(),
                m.to_provider.clone(),
            ]);
        }
        out.push_str(&table.to_string());
    }
    if !plan.releases.is_empty() {
        out.push_str("\ngiven back:\n");
        let mut table = Table::new(&["MACHINE", "REGION", "OFFERING", "$/HOUR", "TASKS"]);
        for r in &plan.releases {
            table.row(vec![
                r.machine.clone(),
                r.region.clone(),
                r.offering.clone(),
                dollars(r.price_micros),
                r.tasks.to_string(),
            ]);
        }
        out.push_str(&table.to_string());
    }
    if !plan.unplaced.is_empty() {
        out.push_str("\nnowhere to go (the evacuation is refused until these can move):\n");
        let mut table = Table::new(&["APP", "INSTANCE", "MACHINE", "WHY"]);
        for u in &plan.unplaced {
            table.row(vec![u.app.clone(), u.instance.to_string(), u.machine.clone(), u.reason.clone()]);
        }
        out.push_str(&table.to_string());
    }
    out
}

fn providers_table(providers: &[ProviderRow]) -> String {
    let mut table = Table::new(&["PROVIDER", "STATE", "CONFIGURED", "MACHINES", "TASKS", "$/HOUR", "LAST EVACUATION"]);
    for p in providers {
        let evacuation = match &p.evacuation {
            Some(e) if e.state == "running" => progress(e),
            Some(e) => format!(
                "{} {}",
                e.state,
                e.finished_at.map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default()
            ),
            None => "-".into(),
        };
        table.row(vec![
            p.name.clone(),
            p.state.clone(),
            p.offerings.to_string(),
            p.machines.to_string(),
            p.tasks.to_string(),
            dollars(p.cost_per_hour_micros.max(0) as u64),
            evacuation,
        ]);
    }
    table.to_string()
}

fn dollars(micros: u64) -> String {
    format!("{:.4}", micros as f64 / 1e6)
}

fn duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}
