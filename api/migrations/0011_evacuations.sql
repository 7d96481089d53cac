-- Provider evacuations: durable, so one under way survives a control-service restart. While
-- one is 'running' or 'completed' its provider takes no new work; 'aborted' and 'lifted' end
-- that.
CREATE TABLE evacuations (
    id              uuid PRIMARY KEY,
    provider        text NOT NULL,
    state           text NOT NULL CHECK (state IN ('running', 'completed', 'aborted', 'lifted')),
    -- How long a job's task on a drained machine may run on before it is re-queued elsewhere.
    batch_grace_ms  bigint NOT NULL CHECK (batch_grace_ms >= 0),
    -- The plan shown when it started (moves, purchases, releases, costs, estimate).
    plan            jsonb NOT NULL,
    created_by      text NOT NULL,
    waves_started   integer NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- At most one evacuation holds a provider at a time.
CREATE UNIQUE INDEX evacuations_live ON evacuations (provider) WHERE state IN ('running', 'completed');

-- When a machine started draining for an evacuation (the batch grace counts from then).
ALTER TABLE machines ADD COLUMN drain_started_at timestamptz;
