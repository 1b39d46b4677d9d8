DROP INDEX devices_status_id_idx;
