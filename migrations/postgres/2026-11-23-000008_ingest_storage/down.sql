DROP INDEX webhook_events_received_brin;
CREATE INDEX webhook_events_source_received_idx ON webhook_events (source_id, received_at);
ALTER TABLE devices RESET (fillfactor);
ALTER TABLE webhook_events ALTER COLUMN event_id TYPE TEXT COLLATE "default";
ALTER TABLE devices ALTER COLUMN sn TYPE TEXT COLLATE "default";
