ALTER TABLE webhook_events
    ADD CONSTRAINT webhook_events_source_id_fkey FOREIGN KEY (source_id) REFERENCES webhook_sources (id) ON DELETE CASCADE,
    ADD CONSTRAINT webhook_events_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE SET NULL;
