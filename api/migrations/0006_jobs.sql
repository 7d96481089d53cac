-- Batch jobs are apps whose spec has a [job] section: their tasks run to completion.
ALTER TABLE apps
    -- '' for services; for jobs 'waiting' (for dependencies), 'running', 'succeeded', 'failed'.
    ADD COLUMN job_state   text NOT NULL DEFAULT '',
    ADD COLUMN job_message text NOT NULL DEFAULT '',
    ADD COLUMN started_at  timestamptz,
    ADD COLUMN finished_at timestamptz;
