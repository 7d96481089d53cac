//! `canopy report cost|utilization|savings|budgets` and `canopy cost-policy`: the finance
//! reports (a table, `--output json`, or `--csv` as the API exports it; budgets are set by
//! policies' `[budget]` rules), and how machine cost is divided. The global `--team` limits a report to one team (admins; others see their own).

use super::client::Client;
use super::print;
use super::table::Table;
use anyhow::Result;
use serde_json::Value;

#[derive(clap::Subcommand, Debug)]
pub enum ReportCommand {
    /// Cost: allocated to tasks, idle, total.
    Cost(ReportArgs),
    /// CPU and memory requested, used and available, in core-hours and GiB-hours.
    Utilization(ReportArgs),
    /// Actual cost against the cheapest single cloud provider on demand.
    Savings(ReportArgs),
    /// Budgets per team: spend, run rate and forecast for the month.
    Budgets(ReportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Group by, comma-separated: team, app, provider, region, offering, day, month [default: team].
    #[arg(long)]
    by: Option<String>,
    /// A calendar month, YYYY-MM [default: the current one].
    #[arg(long, conflicts_with_all = ["from", "to"])]
    month: Option<String>,
    /// First day, YYYY-MM-DD (UTC).
    #[arg(long)]
    from: Option<String>,
    /// Day after the last, YYYY-MM-DD [default: tomorrow].
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Only this provider's machines.
    #[arg(long)]
    provider: Option<String>,
    /// Print CSV, as `GET /v1/reports/...?format=csv` exports it.
    #[arg(long)]
    csv: bool,
}

pub async fn run(client: &Client, command: ReportCommand, json: bool) -> Result<()> {
    let (name, args) = match command {
        ReportCommand::Cost(args) => ("cost", args),
        ReportCommand::Utilization(args) => ("utilization", args),
        ReportCommand::Savings(args) => ("savings", args),
        ReportCommand::Budgets(args) => ("budgets", args),
    };
    let mut query: Vec<(&str, String)> =
        [("by", args.by), ("month", args.month), ("from", args.from), ("to", args.to), ("provider", args.provider)]
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key, v)))
            .collect();
    let path = format!("/v1/reports/{name}");
    if args.csv {
        query.push(("format", "csv".into()));
        print!("{}", client.get_text(&path, &query).await?);
        return Ok(());
    }
    let report: Value = serde_json::from_str(&client.get_text(&path, &query).await?)?;
    print(json, &report, || table(name, &report))
}

fn dollars(value: &Value) -> String {
    let micros = value.as_i64().unwrap_or(0);
    format!("{:.2}", micros as f64 / 1e6)
}

fn hours(value: &Value) -> String {
    value.as_f64().map(|v| format!("{v:.1}")).unwrap_or_default()
}

/// The human table: the grouping columns, then the report's figures.
fn table(name: &str, report: &Value) -> String {
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    if name == "budgets" {
        let mut table = Table::new(&["TEAM", "BUDGET", "SPENT", "$/HOUR", "FORECAST", "OVER"]);
        for r in &rows {
            table.row(vec![
                r["team"].as_str().unwrap_or_default().to_string(),
                dollars(&r["budget_micros"]),
                dollars(&r["spent_micros"]),
                format!("{:.4}", r["hourly_run_rate_micros"].as_i64().unwrap_or(0) as f64 / 1e6),
                dollars(&r["forecast_micros"]),
                if r["over_budget"].as_bool() == Some(true) { "yes".into() } else { "no".into() },
            ]);
        }
        return format!("month {}\n{table}", report["month"].as_str().unwrap_or_default());
    }
    let by: Vec<String> =
        report["by"].as_array().into_iter().flatten().filter_map(|d| d.as_str().map(str::to_string)).collect();
    let figures: &[(&str, &str)] = match name {
        "cost" => &[("ALLOCATED", "allocated_micros"), ("IDLE", "idle_micros"), ("TOTAL", "total_micros")],
        "savings" => &[("ACTUAL", "actual_micros"), ("BASELINE", "baseline_micros"), ("SAVINGS", "savings_micros")],
        _ => &[
            ("CPU REQ", "cpu_requested_core_hours"),
            ("CPU USED", "cpu_used_core_hours"),
            ("CPU CAP", "cpu_capacity_core_hours"),
            ("MEM REQ", "memory_requested_gib_hours"),
            ("MEM USED", "memory_used_gib_hours"),
            ("MEM CAP", "memory_capacity_gib_hours"),
        ],
    };
    let header: Vec<String> =
        by.iter().map(|d| d.to_uppercase()).chain(figures.iter().map(|(h, _)| h.to_string())).collect();
    let mut table = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    for r in &rows {
        let mut cells: Vec<String> = by
            .iter()
            .map(|d| match &r[d.as_str()] {
                Value::String(text) => text.clone(),
                Value::Null if d == "team" || d == "app" => "(idle)".into(),
                other => other.to_string(),
            })
            .collect();
        cells.extend(
            figures.iter().map(|(_, key)| if name == "utilization" { hours(&r[*key]) } else { dollars(&r[*key]) }),
        );
        table.row(cells);
    }
    let mut text = format!(
        "{} to {}{}\n",
        report["from"].as_str().unwrap_or_default(),
        report["to"].as_str().unwrap_or_default(),
        match report["baseline_provider"].as_str() {
            Some(provider) => format!(", baseline: {provider} on demand"),
            None => String::new(),
        }
    );
    if name == "utilization" {
        text.push_str("(core-hours and GiB-hours)\n");
    } else {
        text.push_str("(dollars)\n");
    }
    text.push_str(&table.to_string());
    text
}

/// Shows the cost policy, or changes the parts given (admin).
pub async fn cost_policy(
    client: &Client,
    allocation: Option<String>,
    share_idle: Option<bool>,
    json: bool,
) -> Result<()> {
    let mut policy: Value = client.get("/v1/cost-policy").await?;
    if allocation.is_some() || share_idle.is_some() {
        if let Some(allocation) = allocation {
            policy["allocation"] = Value::String(allocation);
        }
        if let Some(share_idle) = share_idle {
            policy["share_idle"] = Value::Bool(share_idle);
        }
        policy = client.put("/v1/cost-policy", &policy).await?;
    }
    print(json, &policy, || {
        format!(
            "allocation: {}\nshare idle: {}\n",
            policy["allocation"].as_str().unwrap_or_default(),
            policy["share_idle"].as_bool().unwrap_or_default()
        )
    })
}
