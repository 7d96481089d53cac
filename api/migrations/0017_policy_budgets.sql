-- A team's budget is set by the `[budget]` rule of its policies (org- or team-scoped), webhook
-- included: this table keeps only each team's alert state (the month it is alerted over).
ALTER TABLE team_budgets DROP COLUMN monthly_micros, DROP COLUMN webhook_url;
