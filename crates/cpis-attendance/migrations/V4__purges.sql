-- Record of purges.
-- `cpis purge`: what kind, how many, when (see crate::retention).
CREATE TABLE attendance.purges (
    purge_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL,
    count          bigint NOT NULL,
    retention_days integer NOT NULL,
    purged_at      timestamptz NOT NULL DEFAULT now()
);
