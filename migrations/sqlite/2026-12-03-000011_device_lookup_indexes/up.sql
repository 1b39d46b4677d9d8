-- Device search matches the start of the serial number, devEUI or name, case-insensitively,
-- as a range on each lowercased value: these indexes make each a range read at any fleet
-- size (byte order, so the range holds exactly the values with that prefix).
CREATE INDEX devices_sn_search_idx ON devices ((lower(sn)));
CREATE INDEX devices_dev_eui_search_idx ON devices ((lower(dev_eui)));
CREATE INDEX devices_name_search_idx ON devices ((lower(name)));
-- Alert evaluation counts the offline devices per source and reads a source's first ones by
-- serial number: one range of this index each. It replaces the (status, id) index, which
-- served the keyset walk over every offline device that this read replaces.
CREATE INDEX devices_status_source_sn_idx ON devices (status, source_id, sn);
DROP INDEX devices_status_id_idx;
