ALTER TABLE devices RESET (fillfactor);
ALTER TABLE webhook_events ALTER COLUMN event_id TYPE TEXT COLLATE "default";
ALTER TABLE devices ALTER COLUMN sn TYPE TEXT COLLATE "default";
