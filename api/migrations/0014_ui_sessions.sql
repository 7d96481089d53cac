-- Web UI sessions: signing in with an API token opens one. Only the SHA-256 digest of the
-- session's cookie secret is stored (like tokens); the CSRF token every form carries is
-- per session. Revoking the token ends its sessions (sessions are read joined to it).
CREATE TABLE ui_sessions (
    digest      text PRIMARY KEY,
    token_id    uuid NOT NULL REFERENCES tokens(id),
    csrf        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
