-- Webhook events are written only by ingest, with source and device ids it has just read,
-- locked or created in the same transaction, and sources and devices are never deleted.
-- The per-row foreign-key checks (a trigger and a KEY SHARE lock each) took half the cost
-- of each event insert (docs/benchmarks.md), so PostgreSQL no longer runs them.
ALTER TABLE webhook_events
    DROP CONSTRAINT webhook_events_source_id_fkey,
    DROP CONSTRAINT webhook_events_device_id_fkey;
