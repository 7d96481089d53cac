-- Metering and cost. Agents report cumulative cgroup counters per task; each heartbeat adds
-- the increase since the previous report to the task's row for the current UTC hour. The
-- ledger (machine-hours x price, allocated to tasks by canopy_core::cost) is materialised per
-- UTC day in machine_days and cost_days, which the reports read.

ALTER TABLE settings
    -- What a task is charged for: 'request', or 'max-request-usage' per resource.
    ADD COLUMN cost_allocation text NOT NULL DEFAULT 'request'
        CHECK (cost_allocation IN ('request', 'max-request-usage')),
    -- Spread each machine's idle cost over its tasks instead of reporting it as idle.
    ADD COLUMN cost_share_idle boolean NOT NULL DEFAULT false,
    -- Days before this one are materialised for good; later days are recomputed.
    ADD COLUMN metered_through date;

-- The last counters each task reported, to take the next report's increase from.
ALTER TABLE tasks
    ADD COLUMN memory_byte_seconds bigint NOT NULL DEFAULT 0,
    ADD COLUMN memory_sampled_ms   bigint NOT NULL DEFAULT 0;

CREATE TABLE task_usage_hours (
    task_id             uuid NOT NULL REFERENCES tasks(id),
    -- The UTC hour the reports arrived in.
    hour                timestamptz NOT NULL,
    cpu_usec            bigint NOT NULL CHECK (cpu_usec >= 0),
    -- Integral of sampled memory usage, and the time it covers: average = bytes*s / s.
    memory_byte_seconds bigint NOT NULL CHECK (memory_byte_seconds >= 0),
    memory_sampled_ms   bigint NOT NULL CHECK (memory_sampled_ms >= 0),
    memory_peak         bigint NOT NULL CHECK (memory_peak >= 0),
    PRIMARY KEY (task_id, hour)
);
CREATE INDEX task_usage_hours_by_hour ON task_usage_hours (hour);

-- One row per machine and UTC day it existed: its cost and how much of it no task held.
CREATE TABLE machine_days (
    day                 date NOT NULL,
    machine_id          uuid NOT NULL REFERENCES machines(id),
    provider            text NOT NULL,
    region              text NOT NULL,
    offering            text NOT NULL,
    -- 'on-demand', 'spot' (at the price paid) or 'owned' (amortized).
    price_kind          text NOT NULL,
    ms                  bigint NOT NULL,
    cost_micros         bigint NOT NULL CHECK (cost_micros >= 0),
    idle_micros         bigint NOT NULL CHECK (idle_micros >= 0),
    -- Capacity over the time it existed: milli-cpu seconds and byte seconds.
    cpu_capacity        bigint NOT NULL,
    memory_capacity     bigint NOT NULL,
    PRIMARY KEY (day, machine_id)
);

-- One row per machine, app and UTC day: the app's tasks' share of the machine's cost, and
-- what they requested and used (milli-cpu seconds, byte seconds). Sum of micros over a
-- machine-day plus its idle_micros is its cost_micros exactly.
CREATE TABLE cost_days (
    day                 date NOT NULL,
    machine_id          uuid NOT NULL REFERENCES machines(id),
    app_id              uuid NOT NULL REFERENCES apps(id),
    team_id             uuid NOT NULL REFERENCES teams(id),
    provider            text NOT NULL,
    region              text NOT NULL,
    offering            text NOT NULL,
    micros              bigint NOT NULL CHECK (micros >= 0),
    cpu_requested       bigint NOT NULL,
    cpu_used            bigint NOT NULL,
    memory_requested    bigint NOT NULL,
    memory_used         bigint NOT NULL,
    PRIMARY KEY (day, machine_id, app_id)
);
CREATE INDEX cost_days_by_team ON cost_days (team_id, day);
