-- One SyncPlans upload per council at a time, across replicas. An upload is
-- kept fresh (last_seen_at) while its messages arrive; an abandoned one is
-- swept with its staged rows by its own staleness, never by row age.
-- Unlogged like the staged rows: a crash loses only unapplied uploads.
CREATE UNLOGGED TABLE registry.sync_uploads (
    sync_id      uuid PRIMARY KEY,
    council_code text NOT NULL UNIQUE,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
