-- Bare-metal hosts registered by an operator and powered through their BMC (Redfish). A
-- claim ties a host to the machine row Canopy provisioned on it (the provider's idempotency
-- key); a quarantined host failed and waits for an operator.

CREATE TABLE hosts (
    name            text PRIMARY KEY,
    region          text NOT NULL,
    class           text NOT NULL,
    milli_cpu       bigint NOT NULL CHECK (milli_cpu > 0),
    memory          bigint NOT NULL CHECK (memory > 0),
    labels          jsonb NOT NULL DEFAULT '{}',
    -- Amortized cost, micro-units per hour.
    price_micros    bigint NOT NULL CHECK (price_micros >= 0),
    bmc_url         text NOT NULL,
    bmc_username    text NOT NULL,
    -- Needed in clear to talk to the BMC; never returned by the API.
    bmc_password    text NOT NULL,
    system_id       text NOT NULL,
    claim_key       text UNIQUE,
    claim_tags      jsonb NOT NULL DEFAULT '{}',
    claim_seen_on   boolean NOT NULL DEFAULT false,
    quarantined     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bmc_url, system_id)
);
