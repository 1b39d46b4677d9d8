-- Alert evaluation reads the offline devices in keyset chunks (status, then id): this index
-- makes each chunk a range read whatever the fleet size. A device's status rarely changes, so
-- readings still update its row without touching this index.
CREATE INDEX devices_status_id_idx ON devices (status, id);
