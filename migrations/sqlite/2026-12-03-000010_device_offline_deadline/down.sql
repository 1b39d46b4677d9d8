DROP TABLE app_settings;
DROP INDEX devices_status_offline_after_idx;
ALTER TABLE devices DROP COLUMN offline_after;
