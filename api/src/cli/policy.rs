//! `canopy policy apply|list|show|versions|test`: portability policies written as files.

use super::client::Client;
use super::print;
use super::table::Table;
use crate::policy::{DryRun, Explanation, Place, PolicyTest};
use crate::store::{AppliedPolicy, PolicyRow};
use anyhow::{Context, Result};
use canopy_core::policy::{Outcome, PolicyDocument, ProviderRun, Scope, Verdict};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Store a policy file (policy.toml) as the policy's next version (unchanged: nothing).
    Apply { file: PathBuf },
    /// The current version of every policy you may see.
    List,
    /// One policy as TOML (default its current version).
    Show {
        name: String,
        #[arg(long)]
        version: Option<i32>,
    },
    /// Every version of a policy: who wrote it and when.
    Versions { name: String },
    /// What a policy file (not stored) says about an app spec, or about every current workload.
    Test { file: PathBuf, app: Option<PathBuf> },
}

fn scope(document: &PolicyDocument) -> String {
    match &document.scope {
        Scope::Org => "org".to_string(),
        Scope::Team(team) => format!("team {team}"),
        Scope::Labels(labels) => {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("labels {}", labels.join(","))
        }
    }
}

/// The rules a policy has, by name.
fn rules(document: &PolicyDocument) -> String {
    let rules = [
        ("residency", document.residency.is_some()),
        ("portability", document.portability.is_some()),
        ("concentration", document.concentration.is_some()),
        ("budget", document.budget.is_some()),
        ("spot", document.spot.is_some()),
    ];
    rules.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect::<Vec<_>>().join(",")
}

fn table(rows: &[PolicyRow]) -> String {
    let mut table = Table::new(&["NAME", "VERSION", "SCOPE", "ENFORCEMENT", "RULES", "BY", "AT"]);
    for row in rows {
        table.row(vec![
            row.name.clone(),
            row.version.to_string(),
            scope(&row.document),
            format!("{:?}", row.document.enforcement).to_lowercase(),
            rules(&row.document),
            row.actor.clone(),
            row.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]);
    }
    table.to_string()
}

/// Reads and validates a policy file locally, so a mistake is named before anything is sent.
pub fn read(file: &std::path::Path) -> Result<PolicyDocument> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    PolicyDocument::from_toml(&text).with_context(|| format!("{} is not a valid policy", file.display()))
}

pub async fn run(client: &Client, command: PolicyCommand, json: bool) -> Result<()> {
    match command {
        PolicyCommand::Apply { file } => {
            let document = read(&file)?;
            let applied: AppliedPolicy = client.put(&format!("/v1/policies/{}", document.name), &document).await?;
            print(json, &applied, || {
                let AppliedPolicy { policy, changed } = &applied;
                let what = if *changed { "applied" } else { "unchanged" };
                format!("policy {} version {} {what}\n", policy.name, policy.version)
            })
        }
        PolicyCommand::List => {
            let rows: Vec<PolicyRow> = client.get("/v1/policies").await?;
            print(json, &rows, || table(&rows))
        }
        PolicyCommand::Show { name, version } => {
            let path = match version {
                Some(version) => format!("/v1/policies/{name}?version={version}"),
                None => format!("/v1/policies/{name}"),
            };
            let row: PolicyRow = client.get(&path).await?;
            let text = toml::to_string(&row.document)?;
            print(json, &row, || {
                let owner = row.owner_team.as_deref().map_or("the organisation".to_string(), |t| format!("team {t}"));
                format!(
                    "# policy {} version {} (owned by {owner}), by {} at {}\n{text}",
                    row.name,
                    row.version,
                    row.actor,
                    row.created_at.format("%Y-%m-%d %H:%M:%S")
                )
            })
        }
        PolicyCommand::Versions { name } => {
            let rows: Vec<PolicyRow> = client.get(&format!("/v1/policies/{name}/versions")).await?;
            print(json, &rows, || table(&rows))
        }
        PolicyCommand::Test { file, app } => {
            let document = read(&file)?;
            let app = app.as_deref().map(super::read_spec).transpose()?;
            let body = serde_json::json!({"policy": document, "app": app});
            let tested: PolicyTest = client.post("/v1/policies/test", &body).await?;
            print(json, &tested, || {
                let mut out = String::new();
                for workload in &tested.workloads {
                    let outcome = if workload.applies { outcome(workload.outcome) } else { "does not apply" };
                    out.push_str(&format!("{}/{}: {outcome}\n", workload.team, workload.app));
                    for verdict in &workload.verdicts {
                        out.push_str(&format!("  {}\n", line(verdict)));
                    }
                }
                if tested.workloads.is_empty() {
                    out.push_str("no workload to test against\n");
                }
                out
            })
        }
    }
}

fn outcome(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allow => "allowed",
        Outcome::Warn => "warned",
        Outcome::Refuse => "refused",
    }
}

/// "refused  policy eu-only (residency): ..."
fn line(verdict: &Verdict) -> String {
    format!("{:<8} {verdict}", outcome(verdict.outcome))
}

fn places(places: &[Place]) -> String {
    let mut table = Table::new(&["MACHINE", "PROVIDER", "REGION", "ZONE", "OFFERING", "TASKS", "$/HOUR"]);
    for p in places {
        table.row(vec![
            p.machine.clone().unwrap_or_else(|| "(to buy)".into()),
            p.provider.clone(),
            p.region.clone(),
            p.zone.clone(),
            format!("{}{}", p.offering, if p.spot { " spot" } else { "" }),
            p.tasks.to_string(),
            p.cost.to_string(),
        ]);
    }
    table.to_string()
}

fn providers(runs: &[ProviderRun]) -> String {
    let mut table = Table::new(&["PROVIDER", "$/HOUR", "NOTE"]);
    for run in runs {
        table.row(vec![
            run.provider.clone(),
            run.cost.map_or_else(|| "-".into(), |c| c.to_string()),
            run.unplaced.clone().unwrap_or_default(),
        ]);
    }
    table.to_string()
}

/// `canopy deploy --dry-run app.toml`.
pub async fn dry_run(client: &Client, file: &std::path::Path, json: bool) -> Result<()> {
    let spec = super::read_spec(file)?;
    let report: DryRun = client.post(&format!("/v1/apps/{}/dry-run", spec.name), &spec).await?;
    print(json, &report, || {
        let verdict = if report.accepted { "would be accepted" } else { "would be REFUSED" };
        let mut out = format!("{} (team {}) {verdict}; nothing was stored\n", report.app, report.team);
        match &report.unplaced {
            Some(why) => out.push_str(&format!("placement: none ({why})\n")),
            None => {
                out.push_str(&format!("placement, {}/hour:\n", report.hourly_cost));
                out.push_str(&places(&report.placement));
            }
        }
        out.push_str("the same workload on each allowed provider:\n");
        out.push_str(&providers(&report.providers));
        if !report.verdicts.is_empty() {
            out.push_str("policy verdicts:\n");
        }
        for verdict in &report.verdicts {
            out.push_str(&format!("  {}\n", line(verdict)));
        }
        out
    })
}

/// `canopy explain APP`.
pub async fn explain(client: &Client, app: &str, json: bool) -> Result<()> {
    let explanation: Explanation = client.get(&format!("/v1/apps/{app}/explain")).await?;
    print(json, &explanation, || {
        let e = &explanation;
        let mut out = format!("{} (team {}), {}/hour now\n", e.app, e.team, e.hourly_cost);
        let mut table = Table::new(&["INSTANCE", "STATE", "MACHINE", "PROVIDER", "REGION", "$/HOUR", "MESSAGE"]);
        for i in &e.instances {
            let place = i.place.as_ref();
            table.row(vec![
                i.instance.to_string(),
                i.state.clone(),
                place.and_then(|p| p.machine.clone()).unwrap_or_else(|| "-".into()),
                place.map_or_else(|| "-".into(), |p| p.provider.clone()),
                place.map_or_else(|| "-".into(), |p| p.region.clone()),
                place.map_or_else(|| "-".into(), |p| p.cost.to_string()),
                i.message.clone(),
            ]);
        }
        out.push_str(&table.to_string());
        out.push_str("why:\n");
        for reason in &e.reasons {
            out.push_str(&format!("  - {reason}\n"));
        }
        out.push_str("the same workload on each allowed provider now:\n");
        out.push_str(&providers(&e.providers));
        for verdict in &e.verdicts {
            out.push_str(&format!("  {}\n", line(verdict)));
        }
        out
    })
}
