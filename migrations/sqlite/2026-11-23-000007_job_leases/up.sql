-- A lease per scheduled job (see the PostgreSQL migration). Timestamps are UTC text.
ALTER TABLE job_state ADD COLUMN lease_owner TEXT;
ALTER TABLE job_state ADD COLUMN lease_expires_at TEXT;
