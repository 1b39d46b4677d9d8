ALTER TABLE job_state DROP COLUMN lease_expires_at;
ALTER TABLE job_state DROP COLUMN lease_owner;
