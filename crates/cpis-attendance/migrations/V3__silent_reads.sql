-- Silent reads in the access audit.
-- A silent read (scheduled care) is audited without an episode.
ALTER TABLE attendance.accesses ALTER COLUMN episode_id DROP NOT NULL,
    ADD COLUMN silent boolean NOT NULL DEFAULT false;
