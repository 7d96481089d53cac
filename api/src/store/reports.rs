//! Reports over the materialised ledger (`machine_days` and `cost_days`, kept current by
//! [`Store::meter`]): cost, utilization and savings for a range of UTC days, grouped by any of
//! team, app, provider, region, offering, day and month, optionally limited to one team or one
//! provider. Each returns typed rows; the API serialises them as JSON or CSV and the web UI
//! renders them.
//!
//! Idle cost (what no task held) belongs to no team: it appears on rows whose `team` is `None`
//! when grouping by team or app, beside the teams' rows, and is left out of a report limited
//! to one team. Amounts are micro-dollars.

use super::{Result, Store, StoreError};
use canopy_core::schedule::Catalog;
use chrono::NaiveDate;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// What report rows can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Team,
    /// An app or job (apps are named per team, so this also groups by team).
    App,
    Provider,
    Region,
    Offering,
    Day,
    /// `YYYY-MM`.
    Month,
}

impl Dimension {
    pub const ALL: [Dimension; 7] = [
        Dimension::Team,
        Dimension::App,
        Dimension::Provider,
        Dimension::Region,
        Dimension::Offering,
        Dimension::Day,
        Dimension::Month,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dimension::Team => "team",
            Dimension::App => "app",
            Dimension::Provider => "provider",
            Dimension::Region => "region",
            Dimension::Offering => "offering",
            Dimension::Day => "day",
            Dimension::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.name() == text)
    }

    /// The column of the `lines` subquery (joined with `teams tm` and `apps ap`) it groups by.
    fn sql(self) -> &'static str {
        match self {
            Dimension::Team => "tm.name",
            Dimension::App => "ap.name",
            Dimension::Provider => "l.provider",
            Dimension::Region => "l.region",
            Dimension::Offering => "l.offering",
            Dimension::Day => "l.day",
            Dimension::Month => "to_char(l.day, 'YYYY-MM')",
        }
    }

    fn null(self) -> &'static str {
        match self {
            Dimension::Day => "NULL::date",
            _ => "NULL::text",
        }
    }
}

/// Which part of the ledger a report covers, and how its rows are grouped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportQuery {
    /// Sorted, without duplicates, `App` always with `Team`; at least one.
    by: Vec<Dimension>,
    /// First UTC day, inclusive.
    pub from: NaiveDate,
    /// Last UTC day, exclusive.
    pub to: NaiveDate,
    /// Only this team's charges (and no idle cost).
    pub team: Option<Uuid>,
    pub provider: Option<String>,
}

impl ReportQuery {
    /// Checks the range and normalises `by` (an empty `by` groups by team). Errors name the
    /// parameter.
    pub fn new(
        by: &[Dimension],
        from: NaiveDate,
        to: NaiveDate,
        team: Option<Uuid>,
        provider: Option<String>,
    ) -> Result<ReportQuery> {
        if to <= from {
            return Err(StoreError::Invalid(format!("to: {to} is not after from ({from})")));
        }
        if (to - from).num_days() > 3660 {
            return Err(StoreError::Invalid("to: a report covers at most ten years".into()));
        }
        let mut by: Vec<Dimension> = if by.is_empty() { vec![Dimension::Team] } else { by.to_vec() };
        if by.contains(&Dimension::App) {
            by.push(Dimension::Team);
        }
        by.sort();
        by.dedup();
        Ok(ReportQuery { by, from, to, team, provider })
    }

    pub fn by(&self) -> &[Dimension] {
        &self.by
    }

    /// The seven group columns, `NULL` for those not grouped by; and the GROUP BY list.
    fn group_sql(&self) -> (String, String) {
        let select = Dimension::ALL
            .iter()
            .map(|d| format!("{} AS {}", if self.by.contains(d) { d.sql() } else { d.null() }, d.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let group = self.by.iter().map(|d| d.sql()).collect::<Vec<_>>().join(", ");
        (select, group)
    }
}

/// The values a row is grouped by; `None` for dimensions not grouped by, and for `team` and
/// `app` on idle rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Group {
    pub team: Option<String>,
    pub app: Option<String>,
    pub provider: Option<String>,
    pub region: Option<String>,
    pub offering: Option<String>,
    pub day: Option<NaiveDate>,
    pub month: Option<String>,
}

impl Group {
    /// The values of `by`, as text: `(idle)` for an idle row's team and app.
    pub fn values(&self, by: &[Dimension]) -> Vec<String> {
        by.iter()
            .map(|d| match d {
                Dimension::Team => self.team.clone().unwrap_or_else(|| "(idle)".into()),
                Dimension::App => self.app.clone().unwrap_or_else(|| "(idle)".into()),
                Dimension::Provider => self.provider.clone().unwrap_or_default(),
                Dimension::Region => self.region.clone().unwrap_or_default(),
                Dimension::Offering => self.offering.clone().unwrap_or_default(),
                Dimension::Day => self.day.map(|d| d.to_string()).unwrap_or_default(),
                Dimension::Month => self.month.clone().unwrap_or_default(),
            })
            .collect()
    }
}

/// Cost of one group: what its tasks were charged (`allocated`) and idle cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CostRow {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub group: Group,
    pub allocated_micros: i64,
    pub idle_micros: i64,
    pub total_micros: i64,
}

/// Utilization of one group, in core-hours and GiB-hours: what tasks requested and used, and
/// the machines' capacity (on idle rows when grouping by team or app; none in a report limited
/// to one team).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct UtilizationRow {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub group: Group,
    pub cpu_requested_core_hours: f64,
    pub cpu_used_core_hours: f64,
    pub cpu_capacity_core_hours: f64,
    pub memory_requested_gib_hours: f64,
    pub memory_used_gib_hours: f64,
    pub memory_capacity_gib_hours: f64,
}

impl UtilizationRow {
    /// Used over requested cpu, if anything was requested.
    pub fn cpu_used_of_requested(&self) -> Option<f64> {
        ratio(self.cpu_used_core_hours, self.cpu_requested_core_hours)
    }

    /// Requested over capacity cpu, if there was capacity.
    pub fn cpu_requested_of_capacity(&self) -> Option<f64> {
        ratio(self.cpu_requested_core_hours, self.cpu_capacity_core_hours)
    }

    pub fn memory_used_of_requested(&self) -> Option<f64> {
        ratio(self.memory_used_gib_hours, self.memory_requested_gib_hours)
    }

    pub fn memory_requested_of_capacity(&self) -> Option<f64> {
        ratio(self.memory_requested_gib_hours, self.memory_capacity_gib_hours)
    }
}

fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// What one group cost, and what the same machine-time would have cost on `baseline_provider`
/// on demand (each machine replaced by that provider's cheapest amd64 on-demand offering with
/// at least its cpu and memory, in the regions the pool used that provider, else any), shared
/// among tasks and idle like the actual cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SavingsRow {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub group: Group,
    pub actual_micros: i64,
    pub baseline_micros: i64,
    /// Baseline minus actual: negative when the single provider would have been cheaper.
    pub savings_micros: i64,
}

/// The savings report: the cheapest single cloud provider for the whole range, and the rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Savings {
    /// `None` when no provider in the catalog offers a machine as large as each one used.
    pub baseline_provider: Option<String>,
    pub rows: Vec<SavingsRow>,
}

/// The filtered ledger lines: tasks' charges from `cost_days`, then idle and capacity from
/// `machine_days` (left out for one team). Binds: $1 from, $2 to, $3 team, $4 provider.
const LINES: &str = "
    SELECT day, machine_id, team_id, app_id, provider, region, offering, micros AS allocated, 0::bigint AS idle,
           cpu_requested, cpu_used, memory_requested, memory_used, 0::bigint AS cpu_capacity,
           0::bigint AS memory_capacity
    FROM cost_days
    WHERE day >= $1 AND day < $2 AND ($3::uuid IS NULL OR team_id = $3) AND ($4::text IS NULL OR provider = $4)
    UNION ALL
    SELECT day, machine_id, NULL, NULL, provider, region, offering, 0, idle_micros, 0, 0, 0, 0, cpu_capacity,
           memory_capacity
    FROM machine_days
    WHERE day >= $1 AND day < $2 AND $3::uuid IS NULL AND ($4::text IS NULL OR provider = $4)";

const GROUP_JOINS: &str = "LEFT JOIN teams tm ON tm.id = l.team_id LEFT JOIN apps ap ON ap.id = l.app_id";

impl Store {
    /// Cost per group: allocated to tasks, idle, and their total.
    #[tracing::instrument(skip_all)]
    pub async fn cost_report(&self, query: &ReportQuery) -> Result<Vec<CostRow>> {
        let (select, group) = query.group_sql();
        let sql = format!(
            "SELECT {select}, SUM(l.allocated)::bigint AS allocated_micros, SUM(l.idle)::bigint AS idle_micros,
                    SUM(l.allocated + l.idle)::bigint AS total_micros
             FROM ({LINES}) l {GROUP_JOINS} GROUP BY {group} ORDER BY {group}"
        );
        Ok(sqlx::query_as::<_, CostRow>(sqlx::AssertSqlSafe(sql))
            .bind(query.from)
            .bind(query.to)
            .bind(query.team)
            .bind(&query.provider)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Requested, used and capacity per group.
    #[tracing::instrument(skip_all)]
    pub async fn utilization_report(&self, query: &ReportQuery) -> Result<Vec<UtilizationRow>> {
        let (select, group) = query.group_sql();
        // milli-cpu seconds per core-hour, byte seconds per GiB-hour.
        let sql = format!(
            "SELECT {select},
                    SUM(l.cpu_requested)::float8 / 3.6e6 AS cpu_requested_core_hours,
                    SUM(l.cpu_used)::float8 / 3.6e6 AS cpu_used_core_hours,
                    SUM(l.cpu_capacity)::float8 / 3.6e6 AS cpu_capacity_core_hours,
                    SUM(l.memory_requested)::float8 / (3600.0 * 1073741824) AS memory_requested_gib_hours,
                    SUM(l.memory_used)::float8 / (3600.0 * 1073741824) AS memory_used_gib_hours,
                    SUM(l.memory_capacity)::float8 / (3600.0 * 1073741824) AS memory_capacity_gib_hours
             FROM ({LINES}) l {GROUP_JOINS} GROUP BY {group} ORDER BY {group}"
        );
        Ok(sqlx::query_as::<_, UtilizationRow>(sqlx::AssertSqlSafe(sql))
            .bind(query.from)
            .bind(query.to)
            .bind(query.team)
            .bind(&query.provider)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Actual cost against the cheapest single cloud provider of `catalog` on demand, per
    /// group. The provider is chosen once for the whole range (over every machine in it, not
    /// only the filtered ones), among providers whose offerings are not owned capacity and fit
    /// every machine shape used.
    #[tracing::instrument(skip_all)]
    pub async fn savings_report(&self, query: &ReportQuery, catalog: &Catalog) -> Result<Savings> {
        let shapes: Vec<ShapeAmount> = sqlx::query_as(
            "SELECT m.capacity_milli_cpu, m.capacity_memory, SUM(d.ms)::bigint
             FROM machine_days d JOIN machines m ON m.id = d.machine_id
             WHERE d.day >= $1 AND d.day < $2 GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(query.from)
        .bind(query.to)
        .fetch_all(&self.pool)
        .await?;
        let used: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT provider, region FROM machine_days WHERE day >= $1 AND day < $2 ORDER BY 1, 2",
        )
        .bind(query.from)
        .bind(query.to)
        .fetch_all(&self.pool)
        .await?;
        let Some((provider, prices)) = cheapest_single_provider(&shapes, &used, catalog) else {
            return Ok(Savings { baseline_provider: None, rows: Vec::new() });
        };
        let (select, group) = query.group_sql();
        // Each machine-day's baseline, shared like its cost: a charge of c of cost C carries
        // c/C of the baseline B (idle included); a machine-day that cost nothing shares its
        // baseline as idle.
        let sql = format!(
            "WITH price AS (SELECT * FROM unnest($5::bigint[], $6::bigint[], $7::bigint[]) AS p(cpu, memory, micros)),
             baseline AS (
                SELECT d.day, d.machine_id, d.cost_micros,
                       round(d.ms::numeric * p.micros / 3600000) AS micros
                FROM machine_days d JOIN machines m ON m.id = d.machine_id
                JOIN price p ON p.cpu = m.capacity_milli_cpu AND p.memory = m.capacity_memory
                WHERE d.day >= $1 AND d.day < $2)
             SELECT {select}, SUM(l.allocated + l.idle)::bigint AS actual_micros,
                    SUM(CASE WHEN b.cost_micros > 0 THEN b.micros * (l.allocated + l.idle) / b.cost_micros
                             WHEN l.team_id IS NULL THEN b.micros ELSE 0 END)::bigint AS baseline_micros,
                    0::bigint AS savings_micros
             FROM ({LINES}) l JOIN baseline b ON b.day = l.day AND b.machine_id = l.machine_id {GROUP_JOINS}
             GROUP BY {group} ORDER BY {group}"
        );
        let mut rows = sqlx::query_as::<_, SavingsRow>(sqlx::AssertSqlSafe(sql))
            .bind(query.from)
            .bind(query.to)
            .bind(query.team)
            .bind(&query.provider)
            .bind(prices.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(prices.iter().map(|p| p.1).collect::<Vec<_>>())
            .bind(prices.iter().map(|p| p.2).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
        for row in &mut rows {
            row.savings_micros = row.baseline_micros - row.actual_micros;
        }
        Ok(Savings { baseline_provider: Some(provider), rows })
    }
}

/// A machine shape (milli-cpu, bytes) with an amount: milliseconds used, or a price per hour.
type ShapeAmount = (i64, i64, i64);

/// The cloud provider of `catalog` whose cheapest fitting on-demand offerings would have cost
/// least for `shapes` (milli-cpu, bytes, milliseconds used), with its hourly price per shape.
/// Only amd64 offerings count, and for a provider the pool used, only the regions it used
/// (`used`: provider, region), so the baseline is the same workloads where they ran, not a
/// price outlier on another continent. Ties go to the provider named first.
fn cheapest_single_provider(
    shapes: &[ShapeAmount],
    used: &[(String, String)],
    catalog: &Catalog,
) -> Option<(String, Vec<ShapeAmount>)> {
    let mut providers: BTreeMap<&str, Vec<&canopy_core::schedule::Offering>> = BTreeMap::new();
    for offering in catalog.offerings.iter().filter(|o| !o.sunk && o.arch() == "amd64") {
        providers.entry(offering.provider.as_str()).or_default().push(offering);
    }
    for (provider, offerings) in providers.iter_mut() {
        let regions: Vec<&str> = used.iter().filter(|(p, _)| p == provider).map(|(_, r)| r.as_str()).collect();
        if offerings.iter().any(|o| regions.contains(&o.region.as_str())) {
            offerings.retain(|o| regions.contains(&o.region.as_str()));
        }
    }
    let mut best: Option<(u128, String, Vec<ShapeAmount>)> = None;
    for (provider, offerings) in providers {
        let mut total: u128 = 0;
        let mut prices = Vec::new();
        for &(cpu, memory, ms) in shapes {
            let fits = offerings.iter().filter(|o| {
                o.capacity.milli_cpu >= cpu.max(0) as u64 && o.capacity.memory_bytes >= memory.max(0) as u64
            });
            let Some(price) = fits.map(|o| o.price_on_demand).min() else {
                total = u128::MAX;
                break;
            };
            total += price as u128 * ms.max(0) as u128;
            prices.push((cpu, memory, i64::try_from(price).unwrap_or(i64::MAX)));
        }
        if total < u128::MAX && best.as_ref().is_none_or(|(b, _, _)| total < *b) {
            best = Some((total, provider.to_string(), prices));
        }
    }
    best.map(|(_, provider, prices)| (provider, prices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_core::Resources;
    use canopy_core::schedule::Offering;

    fn offering(provider: &str, cpu: u64, gib: u64, price: u64) -> Offering {
        Offering {
            provider: provider.into(),
            capacity: Resources::new(cpu, gib << 30),
            price_on_demand: price,
            ..Default::default()
        }
    }

    #[test]
    fn the_cheapest_single_provider_must_fit_every_shape() {
        let in_region = |o: Offering, region: &str| Offering { region: region.into(), ..o };
        let catalog = Catalog {
            offerings: vec![
                offering("aws", 2000, 4, 100),
                offering("aws", 8000, 32, 1000),
                offering("azure", 2000, 8, 90),
                offering("azure", 4000, 16, 150),
                // Elsewhere than where the pool runs azure, or not amd64: not the baseline.
                in_region(offering("azure", 4000, 16, 10), "far"),
                Offering { arch: "arm64".into(), ..offering("azure", 4000, 16, 20) },
                offering("cheap", 2000, 4, 1),
                Offering { sunk: true, ..offering("owned", 64000, 256, 0) },
            ],
        };
        // Two hours of a 2-cpu/4-GiB machine, one hour of a 4-cpu/16-GiB one; the pool ran
        // azure machines in region "" only.
        let shapes = [(2000, 4 << 30, 7_200_000), (4000, 16 << 30, 3_600_000)];
        let used = [("azure".to_string(), String::new())];
        // aws 2 x 100 + 1000 = 1200; azure 2 x 90 + 150 = 330; cheap cannot fit the second;
        // owned capacity is no baseline.
        let (provider, prices) = cheapest_single_provider(&shapes, &used, &catalog).expect("a provider");
        assert_eq!(provider, "azure");
        assert_eq!(prices, vec![(2000, 4 << 30, 90), (4000, 16 << 30, 150)]);
        // Unused by the pool: any region.
        let (_, prices) = cheapest_single_provider(&shapes, &[], &catalog).expect("a provider");
        assert_eq!(prices[1], (4000, 16 << 30, 10));
        assert_eq!(cheapest_single_provider(&[(128_000, 1, 1)], &used, &catalog), None);
    }

    #[test]
    fn app_implies_team_and_ranges_must_be_ordered() {
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).expect("day");
        let query = ReportQuery::new(&[Dimension::Provider, Dimension::App], day(1), day(2), None, None).expect("ok");
        assert_eq!(query.by(), &[Dimension::Team, Dimension::App, Dimension::Provider]);
        let error = ReportQuery::new(&[], day(2), day(2), None, None).expect_err("empty range");
        assert!(error.to_string().starts_with("to: "), "{error}");
        assert_eq!(ReportQuery::new(&[], day(1), day(2), None, None).expect("ok").by(), &[Dimension::Team]);
    }
}
