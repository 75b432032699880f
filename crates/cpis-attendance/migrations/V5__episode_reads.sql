-- Episode reads in the access audit.
-- A setting's ListEpisodes is audited as an access without an episode.
ALTER TABLE attendance.accesses ADD COLUMN episodes_read boolean NOT NULL DEFAULT false;
