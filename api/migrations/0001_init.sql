-- Canopy control-service schema. Every state change happens in a transaction; nothing the
-- control service needs after a restart lives only in memory.

CREATE TABLE teams (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE machines (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    provider        text NOT NULL,
    address         text NOT NULL,
    agent_endpoint  text NOT NULL,
    -- What the control service presents to the agent's own API (logs). Not a user secret.
    control_key     text NOT NULL,
    capacity_milli_cpu  bigint NOT NULL CHECK (capacity_milli_cpu >= 0),
    capacity_memory     bigint NOT NULL CHECK (capacity_memory >= 0),
    cgroup_version  smallint NOT NULL,
    labels          jsonb NOT NULL DEFAULT '{}',
    state           text NOT NULL,
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- API tokens are stored as SHA-256 digests only; the secret is shown once at creation.
CREATE TABLE tokens (
    id          uuid PRIMARY KEY,
    digest      text NOT NULL UNIQUE,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'developer', 'finance', 'agent')),
    team_id     uuid REFERENCES teams(id),
    machine_id  uuid REFERENCES machines(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (role <> 'agent' OR machine_id IS NOT NULL),
    CHECK (role NOT IN ('developer', 'finance') OR team_id IS NOT NULL)
);

-- Single-use tokens a new machine's agent presents once to join the pool.
CREATE TABLE join_tokens (
    digest      text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    machine_id  uuid REFERENCES machines(id)
);

CREATE TABLE apps (
    id          uuid PRIMARY KEY,
    team_id     uuid NOT NULL REFERENCES teams(id),
    name        text NOT NULL,
    version     integer NOT NULL,
    instances   integer NOT NULL CHECK (instances >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE UNIQUE INDEX apps_live_name ON apps (team_id, name) WHERE deleted_at IS NULL;

CREATE TABLE app_versions (
    app_id      uuid NOT NULL REFERENCES apps(id),
    version     integer NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, version)
);

CREATE TABLE tasks (
    id              uuid PRIMARY KEY,
    app_id          uuid NOT NULL REFERENCES apps(id),
    version         integer NOT NULL,
    instance        integer NOT NULL,
    state           text NOT NULL,
    -- 'run' while wanted; 'stop' once the control service wants it gone.
    desired         text NOT NULL DEFAULT 'run' CHECK (desired IN ('run', 'stop')),
    machine_id      uuid REFERENCES machines(id),
    milli_cpu       bigint NOT NULL,
    memory          bigint NOT NULL,
    pid             integer,
    ports           jsonb NOT NULL DEFAULT '{}',
    healthy         boolean,
    restarts        integer NOT NULL DEFAULT 0,
    exit_code       integer,
    exit_signal     integer,
    oom_killed      boolean NOT NULL DEFAULT false,
    message         text NOT NULL DEFAULT '',
    cpu_usec        bigint NOT NULL DEFAULT 0,
    memory_bytes    bigint NOT NULL DEFAULT 0,
    memory_peak     bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    assigned_at     timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX tasks_active_by_machine ON tasks (machine_id)
    WHERE state IN ('assigned', 'running');
CREATE INDEX tasks_by_app ON tasks (app_id, instance);
CREATE INDEX tasks_pending ON tasks (created_at) WHERE state = 'pending';

-- Append-only audit and event log.
CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    kind        text NOT NULL,
    subject     text NOT NULL,
    team_id     uuid,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_recent ON events (at DESC);

CREATE FUNCTION events_are_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
