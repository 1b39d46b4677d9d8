-- A notification that could not be delivered within alerts.notification_max_age (or a test
-- that failed) ends: marked failed, no longer retried, kept with its last error.
ALTER TABLE outbox ADD COLUMN failed_at TIMESTAMPTZ;
