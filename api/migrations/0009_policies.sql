-- Portability policies: every apply that changes a policy's document is a new version; the
-- current one is what deploys, placement and the portability re-check obey.
CREATE TABLE policies (
    name        text PRIMARY KEY,
    version     integer NOT NULL,
    -- The team whose developers wrote it and may change it; NULL: only admins may.
    owner_team  uuid REFERENCES teams(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE policy_versions (
    name        text NOT NULL REFERENCES policies(name),
    version     integer NOT NULL,
    document    jsonb NOT NULL,
    actor       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- What the policies bind an app to (allowed places, spot use, on-demand minimum), decided at
-- deploy and again whenever policies or catalogs change; NULL: nothing beyond its spec.
ALTER TABLE apps ADD COLUMN policy_binding jsonb;
-- Why the app lost its portability (its min_providers verdicts), '' while it has it.
ALTER TABLE apps ADD COLUMN portability text NOT NULL DEFAULT '';
