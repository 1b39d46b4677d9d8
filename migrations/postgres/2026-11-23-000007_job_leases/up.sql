-- A lease per scheduled job, so a job that is one piece of work (device check, retention,
-- inventory, alert evaluation) runs on one replica per tick, and another takes over if that
-- replica dies mid-run.
ALTER TABLE job_state ADD COLUMN lease_owner TEXT, ADD COLUMN lease_expires_at TIMESTAMPTZ;
