-- Several dead letters can come from one message (the bad actions of one envelope): `letter`, a
-- checksum of each letter's payload, keeps them apart in the sorting key, which alone (topic,
-- partition, offset) collapsed them into one. A redelivered letter still replaces its copy.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS letter UInt32,
    MODIFY ORDER BY (source_topic, source_partition, source_offset, letter);
