-- The registry schema: plans, their append-only change history, and the
-- staging area of bulk syncs.

CREATE TABLE registry.plans (
    plan_id                uuid PRIMARY KEY,
    council_code           text NOT NULL,
    local_reference        text NOT NULL,
    nhs_number             text NOT NULL,
    date_of_birth          date,
    plan_type              smallint NOT NULL,
    start_date             date NOT NULL,
    end_date               date,
    expected_delivery_date date,
    team_name              text NOT NULL,
    office_phone           text NOT NULL,
    emergency_duty_phone   text NOT NULL,
    email                  text NOT NULL,
    version                bigint NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- Set when the plan was entered in error: never shown again, kept for audit.
    deleted_at             timestamptz
);

-- One live plan per council and case reference (a deleted one frees the reference).
CREATE UNIQUE INDEX plans_council_reference ON registry.plans (council_code, local_reference)
    WHERE deleted_at IS NULL;
-- LookupFlags: one index probe per check-in, whatever the size of the register.
CREATE INDEX plans_nhs_number ON registry.plans (nhs_number) WHERE deleted_at IS NULL;

-- Who changed which plan, when, and which fields: append-only.
CREATE TABLE registry.plan_changes (
    change_id      bigserial PRIMARY KEY,
    plan_id        uuid NOT NULL REFERENCES registry.plans (plan_id),
    version        bigint NOT NULL,
    action         text NOT NULL,
    changed_fields text[] NOT NULL,
    changed_by     text NOT NULL,
    changed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX plan_changes_plan ON registry.plan_changes (plan_id, change_id);

CREATE FUNCTION registry.refuse_history_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'registry.plan_changes is append-only';
END;
$$;
CREATE TRIGGER plan_changes_append_only
    BEFORE UPDATE OR DELETE ON registry.plan_changes
    FOR EACH ROW EXECUTE FUNCTION registry.refuse_history_rewrite();

-- Rows of SyncPlans uploads in progress. Unlogged: a crash loses only
-- uploads that had not been applied, which their clients must resend anyway.
CREATE UNLOGGED TABLE registry.sync_rows (
    sync_id                uuid NOT NULL,
    local_reference        text NOT NULL,
    row_no                 bigint NOT NULL,
    -- A refused row: its reference is protected from being ended, nothing else.
    rejected               boolean NOT NULL,
    nhs_number             text,
    date_of_birth          date,
    plan_type              smallint,
    start_date             date,
    end_date               date,
    expected_delivery_date date,
    team_name              text,
    office_phone           text,
    emergency_duty_phone   text,
    email                  text,
    started_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sync_id, local_reference)
);
