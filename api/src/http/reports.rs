//! `/v1/reports/{cost,utilization,savings,budgets}`: the finance reports, as JSON or CSV
//! (`format=csv` or `Accept: text/csv`).
//!
//! Parameters: `by` (comma-separated: team, app, provider, region, offering, day, month; team
//! by default), `month=YYYY-MM` or `from=YYYY-MM-DD` (inclusive) and `to=YYYY-MM-DD`
//! (exclusive, default tomorrow) (default: the current UTC month), `team` (a name; admins
//! only, others always see their own team), `provider`, `format`. Unknown or malformed
//! parameters are a 400 naming the parameter.

use super::{ApiError, AppState};
use crate::auth::{Caller, Role};
use crate::store::budgets::BudgetRow;
use crate::store::reports::{CostRow, Dimension, Group, ReportQuery, SavingsRow, UtilizationRow};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/reports/cost", get(cost))
        .route("/reports/utilization", get(utilization))
        .route("/reports/savings", get(savings))
        .route("/reports/budgets", get(budgets))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    by: Option<String>,
    month: Option<String>,
    from: Option<String>,
    to: Option<String>,
    team: Option<String>,
    provider: Option<String>,
    format: Option<String>,
}

/// What every report answers with, around its rows.
#[derive(Serialize)]
struct Report<R> {
    from: NaiveDate,
    to: NaiveDate,
    by: Vec<Dimension>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_provider: Option<String>,
    rows: Vec<R>,
}

/// A parsed request: the query, and whether the answer is CSV.
struct Request {
    query: ReportQuery,
    csv: bool,
}

fn bad(parameter: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("{parameter}: {message}"))
}

fn day(parameter: &str, text: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| bad(parameter, format!("{text:?} is not a YYYY-MM-DD date")))
}

/// The first day of `YYYY-MM` and of the month after.
fn month(text: &str) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let first = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
        .map_err(|_| bad("month", format!("{text:?} is not a YYYY-MM month")))?;
    Ok((first, next_month(first)))
}

fn next_month(first: NaiveDate) -> NaiveDate {
    first.checked_add_months(chrono::Months::new(1)).unwrap_or(NaiveDate::MAX)
}

async fn parse(
    state: &AppState,
    caller: &Caller,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
) -> Result<Request, ApiError> {
    caller.require(&[Role::Admin, Role::Finance, Role::Developer], "read reports")?;
    // serde's message names the parameter ("unknown field `colour`, expected one of ...").
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let by = match params.by.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|name| {
                Dimension::parse(name.trim()).ok_or_else(|| {
                    let known: Vec<&str> = Dimension::ALL.iter().map(|d| d.name()).collect();
                    bad("by", format!("{name:?} is not one of {}", known.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let today = Utc::now().date_naive();
    let (from, to) = match (&params.month, &params.from, &params.to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err(bad("month", "give month or from/to, not both")),
        (Some(m), None, None) => month(m)?,
        (None, Some(from), to) => (
            day("from", from)?,
            to.as_deref().map(|to| day("to", to)).transpose()?.unwrap_or(today + chrono::Days::new(1)),
        ),
        (None, None, Some(_)) => return Err(bad("from", "required with to")),
        (None, None, None) => {
            let first = today.with_day(1).unwrap_or(today);
            (first, next_month(first))
        }
    };
    let team = match (caller.role, &params.team) {
        (Role::Admin, Some(name)) => Some(state.store.team_by_name(name).await?.id),
        (Role::Admin, None) => None,
        (_, requested) => {
            let own = caller.team_id.ok_or_else(|| ApiError::forbidden("this token belongs to no team"))?;
            if let Some(name) = requested {
                let asked = state.store.team_by_name(name).await.map(|t| t.id).ok();
                if asked != Some(own) {
                    return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("team {name} not found")));
                }
            }
            Some(own)
        }
    };
    let csv = match params.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => return Err(bad("format", format!("{other:?} is not json or csv"))),
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.split(',').any(|t| t.trim().starts_with("text/csv"))),
    };
    let provider = params.provider.filter(|p| !p.is_empty());
    let query = ReportQuery::new(&by, from, to, team, provider).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Request { query, csv })
}

/// The query string, parsed in `parse` so its errors have our shape.
pub(crate) type RawParams = Result<Query<Params>, axum::extract::rejection::QueryRejection>;

async fn cost(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    params: RawParams,
) -> Result<Response, ApiError> {
    let request = parse(&state, &caller, params, &headers).await?;
    let rows = state.store.cost_report(&request.query).await?;
    let header = ["allocated_micros", "idle_micros", "total_micros", "total"];
    answer(&request, None, rows, "cost", &header, |r: &CostRow| {
        (
            &r.group,
            vec![
                r.allocated_micros.to_string(),
                r.idle_micros.to_string(),
                r.total_micros.to_string(),
                dollars(r.total_micros),
            ],
        )
    })
}

async fn utilization(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    params: RawParams,
) -> Result<Response, ApiError> {
    let request = parse(&state, &caller, params, &headers).await?;
    let rows = state.store.utilization_report(&request.query).await?;
    let header = [
        "cpu_requested_core_hours",
        "cpu_used_core_hours",
        "cpu_capacity_core_hours",
        "memory_requested_gib_hours",
        "memory_used_gib_hours",
        "memory_capacity_gib_hours",
        "cpu_used_of_requested",
        "cpu_requested_of_capacity",
        "memory_used_of_requested",
        "memory_requested_of_capacity",
    ];
    answer(&request, None, rows, "utilization", &header, |r: &UtilizationRow| {
        let ratio = |value: Option<f64>| value.map(|v| format!("{v:.4}")).unwrap_or_default();
        (
            &r.group,
            vec![
                format!("{:.4}", r.cpu_requested_core_hours),
                format!("{:.4}", r.cpu_used_core_hours),
                format!("{:.4}", r.cpu_capacity_core_hours),
                format!("{:.4}", r.memory_requested_gib_hours),
                format!("{:.4}", r.memory_used_gib_hours),
                format!("{:.4}", r.memory_capacity_gib_hours),
                ratio(r.cpu_used_of_requested()),
                ratio(r.cpu_requested_of_capacity()),
                ratio(r.memory_used_of_requested()),
                ratio(r.memory_requested_of_capacity()),
            ],
        )
    })
}

async fn savings(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    params: RawParams,
) -> Result<Response, ApiError> {
    let request = parse(&state, &caller, params, &headers).await?;
    let savings = state.store.savings_report(&request.query, crate::prices::shipped_catalog()).await?;
    let header = ["baseline_provider", "actual_micros", "baseline_micros", "savings_micros", "savings"];
    let provider = savings.baseline_provider.clone().unwrap_or_default();
    answer(&request, savings.baseline_provider, savings.rows, "savings", &header, |r: &SavingsRow| {
        (
            &r.group,
            vec![
                provider.clone(),
                r.actual_micros.to_string(),
                r.baseline_micros.to_string(),
                r.savings_micros.to_string(),
                dollars(r.savings_micros),
            ],
        )
    })
}

#[derive(Serialize)]
struct BudgetReport {
    month: String,
    rows: Vec<BudgetRow>,
}

/// Budgets of one month (`month`, default the current one) per team: the month's spend (to
/// date, for the current month), run rate and forecast against the budget.
async fn budgets(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    params: RawParams,
) -> Result<Response, ApiError> {
    let request = parse(&state, &caller, params, &headers).await?;
    if request.query.by() != [Dimension::Team] {
        return Err(bad("by", "budgets are per team only"));
    }
    let (from, to) = (request.query.from, request.query.to);
    if from.day() != 1 || to != next_month(from) {
        return Err(bad("month", "budgets cover one calendar month: give month=YYYY-MM"));
    }
    let rows = state.store.budget_report(from, request.query.team, Utc::now()).await?;
    let month = from.format("%Y-%m").to_string();
    if !request.csv {
        return Ok(Json(BudgetReport { month, rows }).into_response());
    }
    let mut text = csv_line(
        ["team", "month", "budget_micros", "spent_micros", "hourly_run_rate_micros", "forecast_micros", "over_budget"]
            .map(String::from),
    );
    for r in &rows {
        text.push_str(&csv_line([
            r.team.clone(),
            month.clone(),
            r.budget_micros.to_string(),
            r.spent_micros.to_string(),
            r.hourly_run_rate_micros.to_string(),
            r.forecast_micros.to_string(),
            r.over_budget.to_string(),
        ]));
    }
    Ok(csv_response("budgets", &request.query, text))
}

/// One report by name, for a caller already authenticated: the web UI's CSV links, where the
/// session stands in for the bearer token and everything else is this API's.
pub(crate) async fn report(
    state: AppState,
    caller: Caller,
    name: &str,
    headers: HeaderMap,
    params: RawParams,
) -> Result<Response, ApiError> {
    match name {
        "cost" => cost(State(state), caller, headers, params).await,
        "utilization" => utilization(State(state), caller, headers, params).await,
        "savings" => savings(State(state), caller, headers, params).await,
        "budgets" => budgets(State(state), caller, headers, params).await,
        other => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no report named {other:?}"))),
    }
}

/// JSON with the report's frame, or CSV: the `by` columns, then `header`.
fn answer<R: Serialize>(
    request: &Request,
    baseline_provider: Option<String>,
    rows: Vec<R>,
    name: &str,
    header: &[&str],
    values: impl Fn(&R) -> (&Group, Vec<String>),
) -> Result<Response, ApiError> {
    let query = &request.query;
    if !request.csv {
        let report = Report { from: query.from, to: query.to, by: query.by().to_vec(), baseline_provider, rows };
        return Ok(Json(report).into_response());
    }
    let columns = query.by().iter().map(|d| d.name().to_string()).chain(header.iter().map(|h| h.to_string()));
    let mut text = csv_line(columns);
    for row in &rows {
        let (group, numbers) = values(row);
        text.push_str(&csv_line(group.values(query.by()).into_iter().chain(numbers)));
    }
    Ok(csv_response(name, query, text))
}

fn csv_response(name: &str, query: &ReportQuery, text: String) -> Response {
    let disposition = format!("attachment; filename=\"{name}-{}-{}.csv\"", query.from, query.to);
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, disposition)], text)
        .into_response()
}

/// One RFC 4180 line: fields with a comma, quote or line break are quoted, quotes doubled.
fn csv_line(fields: impl IntoIterator<Item = String>) -> String {
    let mut line = fields
        .into_iter()
        .map(|f| if f.contains([',', '"', '\n', '\r']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f })
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// Micro-dollars as dollars with six decimals (exact).
fn dollars(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let line = csv_line(["plain".to_string(), "a,b".into(), "say \"hi\"".into(), String::new()]);
        assert_eq!(line, "plain,\"a,b\",\"say \"\"hi\"\"\",\r\n");
    }

    #[test]
    fn dollars_are_exact() {
        assert_eq!(dollars(8_810_000), "8.810000");
        assert_eq!(dollars(-1), "-0.000001");
        assert_eq!(dollars(0), "0.000000");
    }

    #[test]
    fn months_and_days_name_their_parameter() {
        assert_eq!(month("2026-11").expect("month").1, NaiveDate::from_ymd_opt(2026, 12, 1).expect("day"));
        assert!(month("2026-13").expect_err("bad").message.starts_with("month: "));
        assert!(day("from", "11/01/2026").expect_err("bad").message.starts_with("from: "));
    }
}
