-- Telltale's first schema: the whole domain, so later features extend it rather than redesign it.
-- Every timestamp is TEXT in fixed-width UTC ("YYYY-MM-DD HH:MM:SS.ffffff+00:00"), so text order is time order.
-- Secret columns (BLOB) hold AEAD ciphertext, never plaintext.

CREATE TABLE webhook_sources (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    webhook_uuid TEXT UNIQUE,
    secret BLOB,
    period_secs BIGINT NOT NULL DEFAULT 900,
    grace_secs BIGINT NOT NULL DEFAULT 300,
    verified_at TEXT,
    last_event_at TEXT,
    last_system_notice TEXT,
    last_system_notice_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    source_id BIGINT REFERENCES webhook_sources (id) ON DELETE SET NULL,
    sn TEXT NOT NULL UNIQUE,
    dev_eui TEXT,
    mdp_device_id TEXT,
    name TEXT,
    model TEXT,
    status TEXT NOT NULL DEFAULT 'unknown',
    last_seen_at TEXT,
    last_event_type TEXT,
    last_payload TEXT,
    battery INTEGER,
    expected_interval_secs BIGINT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX devices_source_id_idx ON devices (source_id);

CREATE TABLE webhook_events (
    id INTEGER PRIMARY KEY,
    source_id BIGINT NOT NULL REFERENCES webhook_sources (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    device_id BIGINT REFERENCES devices (id) ON DELETE SET NULL,
    event_time TEXT,
    received_at TEXT NOT NULL,
    payload TEXT NOT NULL,
    UNIQUE (source_id, event_id)
);
CREATE INDEX webhook_events_source_received_idx ON webhook_events (source_id, received_at);
CREATE INDEX webhook_events_device_time_idx ON webhook_events (device_id, event_time);

CREATE TABLE webhook_rejections (
    id INTEGER PRIMARY KEY,
    source_name TEXT,
    reason TEXT NOT NULL,
    status INTEGER NOT NULL,
    remote_addr TEXT,
    headers TEXT NOT NULL,
    body_excerpt TEXT NOT NULL,
    body_size BIGINT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX webhook_rejections_received_idx ON webhook_rejections (received_at);

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    email TEXT,
    created_at TEXT NOT NULL
);

CREATE TABLE connections (
    id INTEGER PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    name TEXT NOT NULL,
    base_url TEXT,
    settings TEXT NOT NULL DEFAULT '{}',
    credentials BLOB,
    access_token BLOB,
    refresh_token BLOB,
    token_fingerprint TEXT,
    expires_at TEXT,
    refresh_expires_at TEXT,
    status TEXT NOT NULL DEFAULT 'missing',
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_refresh_attempt_at TEXT,
    last_refresh_success_at TEXT,
    last_sync_at TEXT,
    next_refresh_at TEXT,
    lease_owner TEXT,
    lease_expires_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (account_id, provider, name)
);
CREATE INDEX connections_next_refresh_idx ON connections (next_refresh_at);

CREATE TABLE refresh_log (
    id INTEGER PRIMARY KEY,
    connection_id BIGINT REFERENCES connections (id) ON DELETE SET NULL,
    provider TEXT NOT NULL,
    trigger TEXT NOT NULL,
    -- who started the attempt: the scheduler, a staff user's email, the CLI, the cron endpoint
    actor TEXT,
    dry_run BOOLEAN NOT NULL DEFAULT 0,
    success BOOLEAN NOT NULL,
    error TEXT,
    old_expires_at TEXT,
    new_expires_at TEXT,
    duration_ms BIGINT NOT NULL,
    attempted_at TEXT NOT NULL
);
CREATE INDEX refresh_log_attempted_idx ON refresh_log (attempted_at);
CREATE INDEX refresh_log_connection_idx ON refresh_log (connection_id);

CREATE TABLE poll_endpoint_state (
    id INTEGER PRIMARY KEY,
    connection_id BIGINT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    schedule TEXT,
    next_due_at TEXT,
    last_run_at TEXT,
    last_success_at TEXT,
    last_status TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at TEXT,
    UNIQUE (connection_id, endpoint)
);
CREATE INDEX poll_endpoint_state_due_idx ON poll_endpoint_state (next_due_at);

CREATE TABLE poll_runs (
    id INTEGER PRIMARY KEY,
    connection_id BIGINT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    trigger TEXT NOT NULL,
    success BOOLEAN NOT NULL,
    items BIGINT NOT NULL DEFAULT 0,
    pages INTEGER NOT NULL DEFAULT 0,
    http_status INTEGER,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    started_at TEXT NOT NULL
);
CREATE INDEX poll_runs_connection_idx ON poll_runs (connection_id, endpoint, started_at);

CREATE TABLE platform_data (
    id INTEGER PRIMARY KEY,
    connection_id BIGINT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    item_count BIGINT NOT NULL,
    content_hash TEXT NOT NULL,
    payload TEXT NOT NULL,
    fetched_at TEXT NOT NULL
);
CREATE INDEX platform_data_connection_idx ON platform_data (connection_id, endpoint, fetched_at);

CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    alert_key TEXT NOT NULL UNIQUE,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    summary TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    occurrences BIGINT NOT NULL DEFAULT 1,
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    resolved_at TEXT,
    acknowledged_at TEXT,
    acknowledged_by TEXT,
    last_notified_at TEXT,
    notify_count INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE INDEX alerts_state_idx ON alerts (state);

CREATE TABLE alert_events (
    id INTEGER PRIMARY KEY,
    alert_id BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    detail TEXT,
    at TEXT NOT NULL
);
CREATE INDEX alert_events_alert_idx ON alert_events (alert_id);

CREATE TABLE silences (
    id INTEGER PRIMARY KEY,
    matcher TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT,
    starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    alert_id BIGINT REFERENCES alerts (id) ON DELETE SET NULL,
    kind TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    body_text TEXT NOT NULL,
    body_html TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TEXT NOT NULL,
    sent_at TEXT,
    lease_owner TEXT,
    lease_expires_at TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX outbox_pending_idx ON outbox (sent_at, next_attempt_at);
CREATE INDEX outbox_alert_idx ON outbox (alert_id);

CREATE TABLE job_state (
    name TEXT PRIMARY KEY,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    schedule TEXT NOT NULL,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    last_run_at TEXT,
    last_result TEXT,
    last_error TEXT,
    next_run_at TEXT,
    updated_at TEXT NOT NULL
);

CREATE TABLE staff_users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT 0,
    last_login_at TEXT,
    created_at TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES staff_users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    last_used_at TEXT,
    expires_at TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id);
