-- When each online device counts as offline if nothing more arrives: its last reading plus its
-- expected interval times the offline factor, written by ingest. The offline check reads the
-- devices past their deadline along this index, so its cost follows the devices that went
-- quiet, not the fleet.
ALTER TABLE devices ADD COLUMN offline_after TIMESTAMPTZ;
CREATE INDEX devices_status_offline_after_idx ON devices (status, offline_after);

-- Small named values the service keeps for itself, shared by every replica (for example the
-- offline policy the deadlines above were computed with, so a changed one is re-applied).
CREATE TABLE app_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Existing devices get their deadlines under the default policy (10 minutes × 2), remembered
-- as such: a service configured otherwise rewrites them at its first offline check.
UPDATE devices
SET offline_after = last_seen_at + make_interval(secs => COALESCE(expected_interval_secs, 600) * 2)
WHERE last_seen_at IS NOT NULL;
INSERT INTO app_settings (key, value, updated_at) VALUES ('devices.offline_policy', '600s x2', now());
