-- Scheduled jobs: the last instant handled (run or skipped: never considered again), and for
-- each run, the scheduled job it was started for.
ALTER TABLE apps
    ADD COLUMN cron_last timestamptz,
    ADD COLUMN parent_id uuid REFERENCES apps(id);
CREATE INDEX apps_parent ON apps (parent_id) WHERE parent_id IS NOT NULL;
