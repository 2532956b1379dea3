-- devicehub site schema, version 2: the gap check scans each boot only from where its
-- last scan ended (boots.holes_upto), and only boots with new messages since.
ALTER TABLE boots ADD COLUMN holes_upto bigint NOT NULL DEFAULT 0;  -- every hole below this seq is listed
DROP INDEX boots_with_gaps;
CREATE INDEX boots_to_check ON boots (site, room, boot) WHERE seqs < max_seq AND max_seq > holes_upto;
