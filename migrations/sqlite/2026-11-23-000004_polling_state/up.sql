-- What the last poll of each (connection, endpoint) found, for the polling page and API, and the
-- hash that lets an identical payload go unstored.
ALTER TABLE poll_endpoint_state ADD COLUMN last_error TEXT;
ALTER TABLE poll_endpoint_state ADD COLUMN last_items BIGINT;
ALTER TABLE poll_endpoint_state ADD COLUMN last_pages INTEGER;
ALTER TABLE poll_endpoint_state ADD COLUMN last_http_status INTEGER;
ALTER TABLE poll_endpoint_state ADD COLUMN last_content_hash TEXT;
CREATE INDEX poll_runs_started_idx ON poll_runs (started_at);
