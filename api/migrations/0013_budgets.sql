-- Monthly budgets per team, and the alerts raised when a team's forecast spend for the month
-- crosses its budget. (Until the policy store holds budget rules, this table is where a
-- team's budget lives.)

CREATE TABLE team_budgets (
    team_id         uuid PRIMARY KEY REFERENCES teams(id),
    monthly_micros  bigint NOT NULL CHECK (monthly_micros >= 0),
    -- POSTed once per crossing, when set.
    webhook_url     text,
    -- The month whose forecast is over budget (alerted), if any: a crossing is alerted once.
    over_month      date,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE budget_alerts (
    id              bigserial PRIMARY KEY,
    team_id         uuid NOT NULL REFERENCES teams(id),
    month           date NOT NULL,
    payload         jsonb NOT NULL,
    webhook_url     text,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '',
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX budget_alerts_undelivered ON budget_alerts (id)
    WHERE webhook_url IS NOT NULL AND delivered_at IS NULL;
