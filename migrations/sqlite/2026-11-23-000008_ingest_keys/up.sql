-- PostgreSQL gives event ids and serial numbers byte-order collation and the devices table
-- room for in-place updates in this version (see its migration). SQLite already compares
-- text byte by byte (BINARY) and has no fill factor.
SELECT 1;
