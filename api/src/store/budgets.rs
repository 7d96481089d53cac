//! Team budgets: the amount (and webhook) come from the team's policies
//! ([`canopy_core::policy::team_budget`]: the strictest org- or team-scoped `[budget]`); here
//! are the budget report, and alerts when a team's forecast for the month crosses its budget:
//! an event, and a webhook POSTed once per crossing from an outbox (`budget_alerts`), so a
//! crash between deciding and sending loses nothing. `team_budgets` keeps each team's alert
//! state.
//!
//! The forecast is the month's spend so far plus the current hourly run rate for the rest of
//! the month, both from [`Store::team_spend`] (the same arithmetic as the policy engine's
//! budget rule).

use super::metering::month_start;
use super::{Result, Store, StoreError, record};
use canopy_core::policy::team_budget;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Delivery attempts of one webhook before it is given up.
pub const WEBHOOK_ATTEMPTS: i32 = 5;

/// One team's budget for a month, and where its spend stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetRow {
    pub team: String,
    pub budget_micros: u64,
    /// Spent in the month: up to now for the current month, all of it for a past one.
    pub spent_micros: u64,
    /// Current hourly run rate (0 once the month is over).
    pub hourly_run_rate_micros: u64,
    /// Spent plus the run rate for the rest of the month.
    pub forecast_micros: u64,
    pub over_budget: bool,
}

/// A budget alert whose webhook has not been delivered yet.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PendingWebhook {
    pub id: i64,
    pub url: String,
    pub payload: serde_json::Value,
}

/// A team with a budget, and its alert state.
struct BudgetSetting {
    team_id: Uuid,
    name: String,
    monthly_micros: u64,
    webhook_url: Option<String>,
    over_month: Option<NaiveDate>,
}

fn utc_midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// `spent + rate x (the rest of the month after now)`, saturating.
pub fn forecast(spent: u64, hourly_rate: u64, now: DateTime<Utc>, month_end: DateTime<Utc>) -> u64 {
    let rest_ms = (month_end - now).num_milliseconds().max(0) as u128;
    let more = hourly_rate as u128 * rest_ms / 3_600_000;
    u64::try_from(spent as u128 + more).unwrap_or(u64::MAX)
}

impl Store {
    /// The budgets of the month starting on `month` (its first day), for one team or all,
    /// sorted by team name.
    #[tracing::instrument(skip_all)]
    pub async fn budget_report(
        &self,
        month: NaiveDate,
        team: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Vec<BudgetRow>> {
        let (start, end) = month_bounds(month)?;
        let settings = self.budget_settings(team).await?;
        let mut rows = Vec::with_capacity(settings.len());
        for setting in settings {
            let (spent, rate) = if now < start {
                (0, self.team_rate(setting.team_id, now).await?)
            } else if now < end {
                let spend = self.team_spend(setting.team_id, now).await?;
                (
                    spend.iter().map(|s| s.month_to_date_micros).sum(),
                    spend.iter().map(|s| s.hourly_run_rate_micros).sum(),
                )
            } else {
                (self.team_month_total(setting.team_id, month, end.date_naive()).await?, 0)
            };
            let forecast = forecast(spent, rate, now.max(start), end);
            let budget = setting.monthly_micros;
            rows.push(BudgetRow {
                team: setting.name,
                budget_micros: budget,
                spent_micros: spent,
                hourly_run_rate_micros: rate,
                forecast_micros: forecast,
                over_budget: forecast > budget,
            });
        }
        Ok(rows)
    }

    /// The teams (one or all) that their policies give a budget, by name.
    async fn budget_settings(&self, team: Option<Uuid>) -> Result<Vec<BudgetSetting>> {
        let policies = self.current_policies().await?;
        let teams: Vec<(Uuid, String, Option<NaiveDate>)> = sqlx::query_as(
            "SELECT t.id, t.name, b.over_month FROM teams t LEFT JOIN team_budgets b ON b.team_id = t.id
             WHERE $1::uuid IS NULL OR t.id = $1 ORDER BY t.name",
        )
        .bind(team)
        .fetch_all(&self.pool)
        .await?;
        Ok(teams
            .into_iter()
            .filter_map(|(team_id, name, over_month)| {
                let budget = team_budget(&policies, &name)?;
                Some(BudgetSetting {
                    team_id,
                    monthly_micros: budget.monthly.0,
                    webhook_url: budget.webhook_url.clone(),
                    name,
                    over_month,
                })
            })
            .collect())
    }

    async fn team_rate(&self, team: Uuid, now: DateTime<Utc>) -> Result<u64> {
        Ok(self.team_spend(team, now).await?.iter().map(|s| s.hourly_run_rate_micros).sum())
    }

    async fn team_month_total(&self, team: Uuid, from: NaiveDate, to: NaiveDate) -> Result<u64> {
        let total: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(micros), 0)::bigint FROM cost_days WHERE team_id = $1 AND day >= $2 AND day < $3",
        )
        .bind(team)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        Ok(total.max(0) as u64)
    }

    /// Compares every team's forecast for `now`'s month with its budget. A forecast that goes
    /// over records `budget.forecast_over` and queues the team's webhook, once per crossing; one
    /// that comes back under records `budget.forecast_within`, so a later crossing alerts
    /// again. Returns the alerts raised, or `None` when another replica's controllers lead.
    #[tracing::instrument(skip_all)]
    pub async fn check_budgets(&self, now: DateTime<Utc>) -> Result<Option<usize>> {
        let month = month_start(now).date_naive();
        let (_, end) = month_bounds(month)?;
        let mut verdicts = Vec::new();
        let settings = self.budget_settings(None).await?;
        let with_budget: Vec<Uuid> = settings.iter().map(|s| s.team_id).collect();
        for setting in settings {
            let spend = self.team_spend(setting.team_id, now).await?;
            let spent: u64 = spend.iter().map(|s| s.month_to_date_micros).sum();
            let rate: u64 = spend.iter().map(|s| s.hourly_run_rate_micros).sum();
            verdicts.push((setting, spent, rate, forecast(spent, rate, now, end)));
        }
        let Some(mut tx) = self.begin_leader().await? else { return Ok(None) };
        // A team whose budget went away starts over: a budget set again alerts afresh.
        sqlx::query("UPDATE team_budgets SET over_month = NULL WHERE over_month IS NOT NULL AND team_id <> ALL($1)")
            .bind(&with_budget)
            .execute(&mut *tx)
            .await?;
        let mut raised = 0;
        for (setting, spent, rate, forecast) in verdicts {
            let budget = setting.monthly_micros;
            let over = forecast > budget;
            let alerted = setting.over_month == Some(month);
            let detail = serde_json::json!({
                "team": setting.name,
                "month": month.format("%Y-%m").to_string(),
                "budget_micros": budget,
                "spent_micros": spent,
                "hourly_run_rate_micros": rate,
                "forecast_micros": forecast,
            });
            if over && !alerted {
                sqlx::query(
                    "INSERT INTO team_budgets (team_id, over_month) VALUES ($1, $2)
                     ON CONFLICT (team_id) DO UPDATE SET over_month = $2, updated_at = now()",
                )
                .bind(setting.team_id)
                .bind(month)
                .execute(&mut *tx)
                .await?;
                let payload = serde_json::json!({"kind": "budget.forecast_over", "detail": detail});
                sqlx::query("INSERT INTO budget_alerts (team_id, month, payload, webhook_url) VALUES ($1, $2, $3, $4)")
                    .bind(setting.team_id)
                    .bind(month)
                    .bind(&payload)
                    .bind(&setting.webhook_url)
                    .execute(&mut *tx)
                    .await?;
                record(&mut tx, "metering", "budget.forecast_over", &setting.name, Some(setting.team_id), detail)
                    .await?;
                raised += 1;
            } else if !over && setting.over_month.is_some() {
                sqlx::query("UPDATE team_budgets SET over_month = NULL WHERE team_id = $1")
                    .bind(setting.team_id)
                    .execute(&mut *tx)
                    .await?;
                if alerted {
                    record(&mut tx, "metering", "budget.forecast_within", &setting.name, Some(setting.team_id), detail)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(Some(raised))
    }

    /// Alerts whose webhook is still to be delivered (oldest first; at most
    /// [`WEBHOOK_ATTEMPTS`] tries each).
    pub async fn pending_webhooks(&self) -> Result<Vec<PendingWebhook>> {
        Ok(sqlx::query_as::<_, PendingWebhook>(
            "SELECT id, webhook_url AS url, payload FROM budget_alerts
             WHERE webhook_url IS NOT NULL AND delivered_at IS NULL AND attempts < $1 ORDER BY id LIMIT 100",
        )
        .bind(WEBHOOK_ATTEMPTS)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records one delivery attempt: delivered when `error` is `None`.
    pub async fn webhook_attempted(&self, id: i64, error: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE budget_alerts SET attempts = attempts + 1, last_error = COALESCE($2, ''),
                    delivered_at = CASE WHEN $2 IS NULL THEN now() END
             WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The first instants of the month starting on `month` and of the next one.
fn month_bounds(month: NaiveDate) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let first = month.with_day(1).ok_or_else(|| StoreError::Invalid(format!("month: {month}")))?;
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .ok_or_else(|| StoreError::Invalid(format!("month: {month} is out of range")))?;
    Ok((utc_midnight(first), utc_midnight(next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecast_runs_the_rate_to_the_end_of_the_month() {
        let at = |text: &str| DateTime::parse_from_rfc3339(text).expect("instant").with_timezone(&Utc);
        let end = at("2026-12-01T00:00:00Z");
        // 15.5 days = 372 h left at 10,000/h.
        assert_eq!(forecast(1_000_000, 10_000, at("2026-11-15T12:00:00Z"), end), 1_000_000 + 3_720_000);
        assert_eq!(forecast(7, 10_000, end, end), 7);
        assert_eq!(forecast(u64::MAX, u64::MAX, at("2026-11-01T00:00:00Z"), end), u64::MAX);
    }
}
