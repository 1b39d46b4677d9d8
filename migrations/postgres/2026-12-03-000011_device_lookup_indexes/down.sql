CREATE INDEX devices_status_id_idx ON devices (status, id);
DROP INDEX devices_status_source_sn_idx;
DROP INDEX devices_name_search_idx;
DROP INDEX devices_dev_eui_search_idx;
DROP INDEX devices_sn_search_idx;
