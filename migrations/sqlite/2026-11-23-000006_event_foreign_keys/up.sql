-- PostgreSQL drops the foreign keys of webhook_events in this version (see its migration).
-- SQLite keeps them: its checks are index lookups inside the process, not where ingest
-- spends its time, and dropping one would mean rebuilding the table.
SELECT 1;
