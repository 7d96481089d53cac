//! P11: monthly cost by team over one year of metering for 1,000 machines.
//!
//! Fills a fresh database (`CANOPY_DATABASE_URL`, default the local Postgres) with the history
//! generator (`Store::seed_history`: 1,000 machines at any time over 365 days, real catalog
//! prices, teams, services and batch jobs, daily usage rows), meters it, then times the cost
//! report by team for each of the last 12 months, several times; prints the p50. The database
//! is dropped at the end.
//!
//! `cargo bench -p canopy-api --bench report [-- --machines N --days D --runs R]`

use canopy_api::store::Store;
use canopy_api::store::history::HistoryConfig;
use canopy_api::store::reports::{Dimension, ReportQuery};
use chrono::{Datelike, NaiveDate, Utc};
use sqlx::Connection;
use std::time::Instant;

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (machines, days, runs) = (arg("--machines", 1000), arg("--days", 365), arg("--runs", 5));
    let server =
        std::env::var("CANOPY_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("canopy_bench_report_{}", uuid::Uuid::new_v4().simple());
    let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base).to_string();
    let mut admin = sqlx::PgConnection::connect(&server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut admin).await?;
    let result = run(&format!("{base}/{name}"), machines, days, runs).await;
    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await?;
    result
}

async fn run(url: &str, machines: u32, days: u32, runs: u32) -> anyhow::Result<()> {
    let store = Store::connect(url).await?;
    // A history ending at the start of this month, so the last 12 months are whole.
    let today = Utc::now().date_naive();
    let this_month = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let end = this_month.and_time(chrono::NaiveTime::MIN).and_utc();
    let started = Instant::now();
    let config = HistoryConfig { machines, days, end, seed: 11 };
    let summary =
        store.seed_history(&config, canopy_api::prices::shipped_catalog(), &canopy_api::prices::owned_rates()).await?;
    let seeded_s = started.elapsed().as_secs_f64();
    println!(
        "seeded and metered in {seeded_s:.1} s: {} machines, {} tasks, {} usage rows, {} days metered",
        summary.machines, summary.tasks, summary.usage_rows, summary.metered_days
    );

    let months: Vec<NaiveDate> =
        (1..=12).filter_map(|back| this_month.checked_sub_months(chrono::Months::new(back))).collect();
    let mut timings_ms = Vec::new();
    let mut rows = 0;
    for run in 0..=runs {
        for &month in &months {
            let to = month.checked_add_months(chrono::Months::new(1)).unwrap_or(this_month);
            let query = ReportQuery::new(&[Dimension::Team], month, to, None, None)?;
            let started = Instant::now();
            let report = store.cost_report(&query).await?;
            // The first pass warms the caches and is not counted.
            if run > 0 {
                timings_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            rows = rows.max(report.len());
        }
    }
    timings_ms.sort_by(f64::total_cmp);
    let p50 = timings_ms[timings_ms.len() / 2];
    let max = timings_ms.last().copied().unwrap_or(0.0);
    println!(
        "monthly cost by team: p50 {p50:.1} ms, max {max:.1} ms over {} reports, {rows} rows each",
        timings_ms.len()
    );
    println!(
        "bench=report machines={machines} months={} cost_by_team_ms={p50:.1} max_ms={max:.1} seed_and_meter_s={seeded_s:.1} machine_rows={} tasks={} usage_rows={}",
        days / 30,
        summary.machines,
        summary.tasks,
        summary.usage_rows
    );
    Ok(())
}
