-- A rollout with a canary step pauses once its canaries are healthy until it is promoted.
ALTER TABLE apps ADD COLUMN promoted boolean NOT NULL DEFAULT false;
