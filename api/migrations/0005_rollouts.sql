-- Rollouts: the version last fully rolled out (what a failed rollout goes back to) and the
-- rollout's state for people to read.
ALTER TABLE apps
    ADD COLUMN stable_version integer,
    -- '' (none yet), 'progressing', 'complete', or 'rolled back from vN: <why>'.
    ADD COLUMN rollout text NOT NULL DEFAULT '';
UPDATE apps SET stable_version = version, rollout = 'complete';
