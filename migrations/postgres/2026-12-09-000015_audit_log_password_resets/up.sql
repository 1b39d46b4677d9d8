-- Who did what, when and from where: every change made by a person or an API token, with
-- before/after for settings (never a secret). Old rows go as new ones are written.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    -- The person's email, or "email (token name)" for an API token.
    actor TEXT NOT NULL,
    client TEXT,
    -- What was done, in words ("Refresh now"), and to what ("Spotify connection 'marketing'").
    action TEXT NOT NULL,
    target TEXT,
    -- The route, for filtering: "POST /api/tokens/{id}/refresh".
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    -- JSON: {"changes": [{"field", "before", "after"}], "note": …}.
    details TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, id);

-- One-time password reset links: only the token's hash is kept, and using it deletes the row.
CREATE TABLE password_resets (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES staff_users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX password_resets_user ON password_resets (user_id);
