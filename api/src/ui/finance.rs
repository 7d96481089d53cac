//! The cost and utilization page: one month (or the last six, for the trend) of the metering
//! ledger by team, provider, app and month, idle cost, savings against a single provider,
//! budgets against their forecast, with SVG charts, filters as a GET form and CSV links. Rows come from the report store functions, the same ones the report API
//! serves; this module only groups them into charts and tables.

use super::chart::{Chart, Limit, Series};
use super::session::Session;
use super::{UiError, render, view};
use crate::auth::Role;
use crate::http::AppState;
use crate::store::budgets::BudgetRow;
use crate::store::reports::{CostRow, Dimension, ReportQuery, Savings, SavingsRow, UtilizationRow};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, Response};
use chrono::{Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The providers a filter offers.
const PROVIDERS: [&str; 4] = ["aws", "azure", "openstack", "baremetal"];
/// Apps the app chart names; the rest are summed as "other apps".
const TOP_APPS: usize = 12;
/// Months the trend chart covers, ending with the month shown.
const TREND_MONTHS: u32 = 6;

/// The filters, named as the report API's parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    month: Option<String>,
    team: Option<String>,
    provider: Option<String>,
}

/// The filters checked: the month's first day, the team (a name) and the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub month: String,
    pub team: Option<String>,
    pub provider: Option<String>,
    #[serde(skip)]
    pub first_day: NaiveDate,
}

impl Selection {
    /// Parses the filters; errors name the parameter. Empty values mean "all".
    pub fn parse(filters: Filters, today: NaiveDate) -> Result<Selection, UiError> {
        let invalid = |message: String| UiError::new(StatusCode::BAD_REQUEST, message);
        let month = filters.month.filter(|m| !m.is_empty()).unwrap_or_else(|| today.format("%Y-%m").to_string());
        let first_day = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
            .map_err(|_| invalid(format!("month: {month:?} is not a YYYY-MM month")))?;
        let provider = filters.provider.filter(|p| !p.is_empty());
        if let Some(provider) = &provider
            && !PROVIDERS.contains(&provider.as_str())
        {
            return Err(invalid(format!("provider: {provider:?} is not one of {}", PROVIDERS.join(", "))));
        }
        Ok(Selection { month, team: filters.team.filter(|t| !t.is_empty()), provider, first_day })
    }

    fn next_month(&self) -> NaiveDate {
        self.first_day.checked_add_months(Months::new(1)).unwrap_or(NaiveDate::MAX)
    }

    fn trend_start(&self) -> NaiveDate {
        self.first_day.checked_sub_months(Months::new(TREND_MONTHS - 1)).unwrap_or(NaiveDate::MIN)
    }

    /// The report API's query string for this selection, grouped `by`.
    fn query_string(&self, by: &str, from_trend: bool) -> String {
        let mut pairs = vec![format!("by={by}")];
        if from_trend {
            pairs.push(format!("from={}&to={}", self.trend_start(), self.next_month()));
        } else {
            pairs.push(format!("month={}", self.month));
        }
        if let Some(team) = &self.team {
            pairs.push(format!("team={team}"));
        }
        if let Some(provider) = &self.provider {
            pairs.push(format!("provider={provider}"));
        }
        pairs.join("&")
    }
}

/// Values per category and series, to draw as stacked bars.
#[derive(Default)]
struct Stack {
    cells: BTreeMap<String, BTreeMap<String, i64>>,
}

impl Stack {
    fn add(&mut self, category: String, series: &str, value: i64) {
        *self.cells.entry(category).or_default().entry(series.to_string()).or_default() += value;
    }

    /// A chart of the categories, largest total first when `by_total` (else in name order),
    /// keeping `limit` and summing the rest as `rest`.
    fn chart(self, id: &str, title: &str, by_total: bool, limit: Option<(usize, &str)>) -> Chart {
        let mut categories: Vec<(String, BTreeMap<String, i64>)> = self.cells.into_iter().collect();
        if by_total {
            categories.sort_by_key(|(name, cells)| (std::cmp::Reverse(cells.values().sum::<i64>()), name.clone()));
        }
        if let Some((keep, rest)) = limit
            && categories.len() > keep
        {
            let mut others: BTreeMap<String, i64> = BTreeMap::new();
            for (_, cells) in categories.drain(keep..) {
                for (series, value) in cells {
                    *others.entry(series).or_default() += value;
                }
            }
            categories.push((rest.to_string(), others));
        }
        let names: Vec<String> = {
            let mut names: Vec<String> = categories.iter().flat_map(|(_, cells)| cells.keys().cloned()).collect();
            names.sort();
            names.dedup();
            names
        };
        let series = names
            .iter()
            .map(|name| Series {
                name: name.clone(),
                values: categories.iter().map(|(_, cells)| cells.get(name).copied().unwrap_or(0)).collect(),
            })
            .collect();
        Chart {
            id: id.into(),
            title: title.into(),
            categories: categories.into_iter().map(|(name, _)| name).collect(),
            series,
            limit: None,
        }
    }
}

/// One line of a cost table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CostLine {
    pub name: String,
    pub allocated: String,
    pub idle: String,
    pub total: String,
    pub share: String,
}

/// The cost rows (grouped by team and provider) summed by `key`, largest first, with shares
/// of `total`.
fn cost_lines(rows: &[CostRow], total: i64, key: impl Fn(&CostRow) -> String) -> Vec<CostLine> {
    let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in rows {
        let sum = sums.entry(key(row)).or_default();
        sum.0 += row.allocated_micros;
        sum.1 += row.idle_micros;
    }
    let mut lines: Vec<(String, i64, i64)> = sums.into_iter().map(|(name, (a, i))| (name, a, i)).collect();
    lines.sort_by_key(|(name, a, i)| (std::cmp::Reverse(a + i), name.clone()));
    lines
        .into_iter()
        .map(|(name, allocated, idle)| CostLine {
            name,
            allocated: view::money(allocated),
            idle: view::money(idle),
            total: view::money(allocated + idle),
            share: view::percent(allocated + idle, total),
        })
        .collect()
}

fn team_name(row: &CostRow) -> String {
    row.group.team.clone().unwrap_or_else(|| "(idle)".into())
}

fn provider_name(row: &CostRow) -> String {
    row.group.provider.clone().unwrap_or_default()
}

/// One line of the utilization table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UtilizationLine {
    pub name: String,
    pub cpu_requested: String,
    pub cpu_used: String,
    pub cpu_used_of_requested: String,
    pub memory_requested: String,
    pub memory_used: String,
    pub memory_used_of_requested: String,
    /// Requested over the machines' capacity ("-" where the capacity is not in the rows: a
    /// team's share of a machine has none).
    pub cpu_requested_of_capacity: String,
    pub memory_requested_of_capacity: String,
}

/// The utilization rows as table lines, named by `name`; rows it names `None` are left out.
fn utilization_lines(
    rows: &[UtilizationRow],
    name: impl Fn(&UtilizationRow) -> Option<String>,
) -> Vec<UtilizationLine> {
    let ratio = |value: Option<f64>| value.map_or_else(|| "-".into(), |v| format!("{:.0}%", v * 100.0));
    rows.iter()
        .filter_map(|r| name(r).map(|name| (name, r)))
        .map(|(name, r)| UtilizationLine {
            name,
            cpu_requested: format!("{:.1}", r.cpu_requested_core_hours),
            cpu_used: format!("{:.1}", r.cpu_used_core_hours),
            cpu_used_of_requested: ratio(r.cpu_used_of_requested()),
            memory_requested: format!("{:.1}", r.memory_requested_gib_hours),
            memory_used: format!("{:.1}", r.memory_used_gib_hours),
            memory_used_of_requested: ratio(r.memory_used_of_requested()),
            cpu_requested_of_capacity: ratio(r.cpu_requested_of_capacity()),
            memory_requested_of_capacity: ratio(r.memory_requested_of_capacity()),
        })
        .collect()
}

/// One team against its budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetLine {
    pub team: String,
    pub budget: String,
    pub spent: String,
    pub run_rate: String,
    pub forecast: String,
    pub over_budget: bool,
}

/// One line of the savings table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavingsLine {
    pub name: String,
    pub actual: String,
    pub baseline: String,
    pub savings: String,
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What the report store returned for a selection.
pub struct Reports {
    /// The month, by team and provider.
    pub by_team: Vec<CostRow>,
    /// The month, by app (and team) and provider.
    pub by_app: Vec<CostRow>,
    /// The trend months, by month and provider.
    pub by_month: Vec<CostRow>,
    /// The month, by team.
    pub utilization: Vec<UtilizationRow>,
    /// The month, by provider.
    pub utilization_by_provider: Vec<UtilizationRow>,
    /// The month by team, against the cheapest single provider on demand.
    pub savings: Savings,
    /// The month's budgets (teams that have one).
    pub budgets: Vec<BudgetRow>,
}

/// The page's context from the reports: figures, charts, tables and CSV links.
pub fn costs_page(session: &Session, selection: &Selection, teams: &[String], reports: &Reports) -> tera::Context {
    let allocated: i64 = reports.by_team.iter().map(|r| r.allocated_micros).sum();
    let idle: i64 = reports.by_team.iter().map(|r| r.idle_micros).sum();
    let total = allocated + idle;

    let mut by_team = Stack::default();
    let mut by_provider = Stack::default();
    for row in &reports.by_team {
        by_team.add(team_name(row), &provider_name(row), row.total_micros);
        by_provider.add(provider_name(row), "allocated", row.allocated_micros);
        by_provider.add(provider_name(row), "idle", row.idle_micros);
    }
    let mut by_app = Stack::default();
    for row in &reports.by_app {
        let name = match (&row.group.team, &row.group.app) {
            (Some(team), Some(app)) => format!("{team}/{app}"),
            _ => "(idle)".into(),
        };
        by_app.add(name, &provider_name(row), row.total_micros);
    }
    let mut by_month = Stack::default();
    for row in &reports.by_month {
        by_month.add(row.group.month.clone().unwrap_or_default(), &provider_name(row), row.total_micros);
    }
    let month = &selection.month;
    let charts = [
        by_team.chart("cost-by-team", &format!("Cost by team, {month} (idle: no team)"), true, None),
        by_provider.chart("cost-by-provider", &format!("Cost by provider, {month}: allocated and idle"), true, None),
        by_app.chart("cost-by-app", &format!("Cost by app, {month}"), true, Some((TOP_APPS, "other apps"))),
        by_month.chart("cost-by-month", &format!("Cost by month, the {TREND_MONTHS} months to {month}"), false, None),
    ];
    let [team_chart, provider_chart, app_chart, month_chart] = charts.map(|c| c.to_svg(view::money));

    let baseline = reports.savings.baseline_provider.clone();
    let savings_total: i64 = reports.savings.rows.iter().map(|r| r.savings_micros).sum();
    let savings_name = |r: &SavingsRow| r.group.team.clone().unwrap_or_else(|| "(idle)".into());
    let savings_chart = Chart {
        id: "savings".into(),
        title: format!(
            "Actual cost by team, {month}, against all on {} on demand",
            baseline.as_deref().unwrap_or("one provider")
        ),
        categories: reports.savings.rows.iter().map(savings_name).collect(),
        series: vec![Series {
            name: "actual".into(),
            values: reports.savings.rows.iter().map(|r| r.actual_micros).collect(),
        }],
        limit: Some(Limit {
            name: format!("all on {}", baseline.as_deref().unwrap_or("one provider")),
            values: reports.savings.rows.iter().map(|r| Some(r.baseline_micros)).collect(),
        }),
    };
    let savings_lines: Vec<SavingsLine> = reports
        .savings
        .rows
        .iter()
        .map(|r| SavingsLine {
            name: savings_name(r),
            actual: view::money(r.actual_micros),
            baseline: view::money(r.baseline_micros),
            savings: view::money(r.savings_micros),
        })
        .collect();

    let budget_chart = Chart {
        id: "budgets".into(),
        title: format!("Budgets, {month}: spent and forecast"),
        categories: reports.budgets.iter().map(|b| b.team.clone()).collect(),
        series: vec![
            Series { name: "spent".into(), values: reports.budgets.iter().map(|b| to_i64(b.spent_micros)).collect() },
            Series {
                name: "forecast for the rest of the month".into(),
                values: reports
                    .budgets
                    .iter()
                    .map(|b| to_i64(b.forecast_micros.saturating_sub(b.spent_micros)))
                    .collect(),
            },
        ],
        limit: Some(Limit {
            name: "budget".into(),
            values: reports.budgets.iter().map(|b| Some(to_i64(b.budget_micros))).collect(),
        }),
    };
    let budget_lines: Vec<BudgetLine> = reports
        .budgets
        .iter()
        .map(|b| BudgetLine {
            team: b.team.clone(),
            budget: view::money(to_i64(b.budget_micros)),
            spent: view::money(to_i64(b.spent_micros)),
            run_rate: view::price(to_i64(b.hourly_run_rate_micros)),
            forecast: view::money(to_i64(b.forecast_micros)),
            over_budget: b.over_budget,
        })
        .collect();

    let csv = |report: &str, by: &str, trend: bool| {
        format!("/ui/reports/{report}?{}&format=csv", selection.query_string(by, trend))
    };
    let mut context = session.context("/ui/costs");
    context.insert("selection", selection);
    context.insert("teams", teams);
    context.insert("team_fixed", &(session.caller.role != Role::Admin));
    context.insert("providers", &PROVIDERS);
    context.insert(
        "figures",
        &serde_json::json!({
            "total": view::money(total),
            "allocated": view::money(allocated),
            "idle": view::money(idle),
            "idle_share": view::percent(idle, total),
            "savings": view::money(savings_total),
            "baseline": baseline,
        }),
    );
    context.insert("savings_chart", &savings_chart.to_svg(view::money));
    context.insert("savings_lines", &savings_lines);
    context.insert("budget_chart", &budget_chart.to_svg(view::money));
    context.insert("budget_lines", &budget_lines);
    context.insert("team_chart", &team_chart);
    context.insert("provider_chart", &provider_chart);
    context.insert("app_chart", &app_chart);
    context.insert("month_chart", &month_chart);
    context.insert("team_lines", &cost_lines(&reports.by_team, total, team_name));
    context.insert("provider_lines", &cost_lines(&reports.by_team, total, provider_name));
    // Idle rows (no team) carry only capacity: the figures above show idle in money.
    context.insert(
        "utilization_tables",
        &serde_json::json!([
            {
                "by": "team",
                "heading": "Team",
                "lines": utilization_lines(&reports.utilization, |r| r.group.team.clone()),
                "csv": csv("utilization", "team", false),
            },
            {
                "by": "provider",
                "heading": "Provider",
                "lines": utilization_lines(&reports.utilization_by_provider, |r| r.group.provider.clone()),
                "csv": csv("utilization", "provider", false),
            },
        ]),
    );
    context.insert(
        "csv",
        &serde_json::json!({
            "team": csv("cost", "team,provider", false),
            "app": csv("cost", "app,provider", false),
            "month": csv("cost", "month,provider", true),
            "savings": csv("savings", "team", false),
            "budgets": csv("budgets", "team", false),
        }),
    );
    context
}

pub async fn costs(
    State(state): State<AppState>,
    session: Session,
    filters: Result<Query<Filters>, QueryRejection>,
) -> Result<Html<String>, UiError> {
    let Query(filters) = filters.map_err(|e| UiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let mut selection = Selection::parse(filters, Utc::now().date_naive())?;
    // A team's token sees its own team only, whatever the filter says (as in the API).
    let (team_id, teams) = match session.caller.role {
        Role::Admin => {
            let teams: Vec<String> = state.store.teams().await?.into_iter().map(|t| t.name).collect();
            let id = match &selection.team {
                Some(name) => Some(state.store.team_by_name(name).await?.id),
                None => None,
            };
            (id, teams)
        }
        _ => {
            let own = session
                .team
                .clone()
                .ok_or_else(|| UiError::new(StatusCode::FORBIDDEN, "this token belongs to no team"))?;
            if selection.team.as_ref().is_some_and(|asked| *asked != own) {
                return Err(UiError::new(
                    StatusCode::NOT_FOUND,
                    format!("team: {:?} not found", selection.team.unwrap_or_default()),
                ));
            }
            selection.team = Some(own.clone());
            (session.caller.team_id, vec![own])
        }
    };
    let query = |by: &[Dimension], from: NaiveDate| {
        ReportQuery::new(by, from, selection.next_month(), team_id, selection.provider.clone())
    };
    let month = selection.first_day;
    let reports = Reports {
        by_team: state.store.cost_report(&query(&[Dimension::Team, Dimension::Provider], month)?).await?,
        by_app: state.store.cost_report(&query(&[Dimension::App, Dimension::Provider], month)?).await?,
        by_month: state
            .store
            .cost_report(&query(&[Dimension::Month, Dimension::Provider], selection.trend_start())?)
            .await?,
        utilization: state.store.utilization_report(&query(&[Dimension::Team], month)?).await?,
        utilization_by_provider: state.store.utilization_report(&query(&[Dimension::Provider], month)?).await?,
        savings: state
            .store
            .savings_report(&query(&[Dimension::Team], month)?, crate::prices::shipped_catalog())
            .await?,
        budgets: state.store.budget_report(month, team_id, Utc::now()).await?,
    };
    Ok(Html(render("costs.html", &costs_page(&session, &selection, &teams, &reports))?))
}

/// A CSV link of the page: the report API's answer for the signed-in caller (its parameters,
/// roles, team scope and CSV), the session standing in for the bearer token.
pub async fn report(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: crate::http::ReportParams,
) -> Result<Response, UiError> {
    Ok(crate::http::report(state, session.caller, &name, headers, params).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("day")
    }

    #[test]
    fn filters_name_the_bad_parameter_and_default_to_this_month() {
        let today = day(2026, 11, 22);
        let selection = Selection::parse(Filters::default(), today).expect("defaults");
        assert_eq!((selection.month.as_str(), selection.first_day), ("2026-11", day(2026, 11, 1)));
        assert_eq!(selection.next_month(), day(2026, 12, 1));
        assert_eq!(selection.trend_start(), day(2026, 6, 1));
        let bad = |filters| Selection::parse(filters, today).expect_err("invalid").message;
        assert!(bad(Filters { month: Some("2026-13".into()), ..Default::default() }).starts_with("month: "));
        assert!(bad(Filters { provider: Some("gcp".into()), ..Default::default() }).starts_with("provider: "));
        let empty = Filters { month: Some(String::new()), team: Some(String::new()), provider: Some(String::new()) };
        assert_eq!(Selection::parse(empty, today).expect("empty is all").team, None);
    }

    #[test]
    fn the_query_string_is_the_report_apis() {
        let filters =
            Filters { month: Some("2026-10".into()), team: Some("alpha".into()), provider: Some("aws".into()) };
        let selection = Selection::parse(filters, day(2026, 11, 22)).expect("valid");
        assert_eq!(
            selection.query_string("team,provider", false),
            "by=team,provider&month=2026-10&team=alpha&provider=aws"
        );
        assert_eq!(
            selection.query_string("month", true),
            "by=month&from=2026-05-01&to=2026-11-01&team=alpha&provider=aws"
        );
    }

    #[test]
    fn stacks_sort_by_total_and_sum_the_rest() {
        let mut stack = Stack::default();
        stack.add("a".into(), "aws", 1);
        stack.add("b".into(), "aws", 5);
        stack.add("b".into(), "azure", 5);
        stack.add("c".into(), "azure", 3);
        stack.add("d".into(), "aws", 2);
        let chart = stack.chart("x", "t", true, Some((2, "rest")));
        assert_eq!(chart.categories, ["b", "c", "rest"]);
        assert_eq!(chart.series[0].name, "aws");
        assert_eq!(chart.series[0].values, [5, 0, 3]);
        assert_eq!(chart.series[1].values, [5, 3, 0]);
    }
}
