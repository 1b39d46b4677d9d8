DROP INDEX devices_name_search_idx;
DROP INDEX devices_dev_eui_search_idx;
DROP INDEX devices_sn_search_idx;
