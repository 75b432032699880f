-- Retention (`cpis purge`): a record of every purge, and the change history
-- may lose rows only to a purge of its plan (the purge sets cpis.purging).

CREATE TABLE registry.purges (
    purge_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           text NOT NULL,
    count          bigint NOT NULL,
    retention_days integer NOT NULL,
    purged_at      timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION registry.refuse_history_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('cpis.purging', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'registry.plan_changes is append-only';
END;
$$;
