-- Provisioned machines: a machine row exists from the moment Canopy decides to buy it
-- ('requested'), before any provider call, so a crash at any point leaves a record to
-- reconcile against the provider's tagged machines.

CREATE TABLE settings (
    -- Tags every machine this control plane creates, so reconciliation finds only ours.
    cluster_id  uuid NOT NULL
);
INSERT INTO settings (cluster_id) VALUES (gen_random_uuid());

ALTER TABLE machines
    ADD COLUMN region        text NOT NULL DEFAULT '',
    ADD COLUMN zone          text NOT NULL DEFAULT '',
    ADD COLUMN offering      text NOT NULL DEFAULT '',
    ADD COLUMN spot          boolean NOT NULL DEFAULT false,
    ADD COLUMN price_micros  bigint NOT NULL DEFAULT 0,
    ADD COLUMN provider_id   text,
    -- Bought through a provider (terminated by Canopy) rather than joined by hand.
    ADD COLUMN provisioned   boolean NOT NULL DEFAULT false,
    ADD COLUMN boot_deadline timestamptz,
    ADD COLUMN idle_since    timestamptz,
    ADD COLUMN state_reason  text NOT NULL DEFAULT '',
    ADD COLUMN terminated_at timestamptz;

CREATE INDEX machines_live ON machines (state) WHERE state <> 'terminated';
