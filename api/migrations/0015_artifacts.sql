-- Files uploaded for specs' artifacts (`canopy deploy` with a local file), content-addressed:
-- the key is the SHA-256 of the bytes, which live in a large object so they stream in and out
-- in chunks. Agents fetch them with their own token.
CREATE TABLE artifacts (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size        bigint NOT NULL CHECK (size >= 0),
    content     oid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
