DROP INDEX poll_runs_started_idx;
ALTER TABLE poll_endpoint_state DROP COLUMN last_content_hash;
ALTER TABLE poll_endpoint_state DROP COLUMN last_http_status;
ALTER TABLE poll_endpoint_state DROP COLUMN last_pages;
ALTER TABLE poll_endpoint_state DROP COLUMN last_items;
ALTER TABLE poll_endpoint_state DROP COLUMN last_error;
