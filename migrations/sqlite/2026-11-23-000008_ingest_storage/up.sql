-- PostgreSQL gives event ids and serial numbers byte-order collation, the devices table room
-- for in-place updates and received_at a BRIN index in this version (see its migration).
-- SQLite already compares text byte by byte (BINARY) and has neither fill factors nor BRIN.
SELECT 1;
