-- When each online device counts as offline if nothing more arrives: its last reading plus its
-- expected interval times the offline factor, written by ingest. The offline check reads the
-- devices past their deadline along this index, so its cost follows the devices that went
-- quiet, not the fleet. NULL until the first check fills it in (see app_settings below).
ALTER TABLE devices ADD COLUMN offline_after TEXT;
CREATE INDEX devices_status_offline_after_idx ON devices (status, offline_after);

-- Small named values the service keeps for itself, shared by every replica (for example the
-- offline policy the deadlines above were computed with, so a changed one is re-applied).
CREATE TABLE app_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
