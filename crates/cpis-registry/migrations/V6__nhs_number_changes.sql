-- Changes of NHS number from the national demographics service.
-- One row per event of the change feed (`event_id`, the idempotency key):
-- the number superseded (with its replacement) or made inactive, and the
-- plans in scope on the number when the event was first recorded (the
-- councils alerted), kept so that every repeat of the event answers the same.
-- A superseded number's plans flag on the replacement too, until the council
-- updates them; a plan row using a superseded number is refused.
CREATE TABLE registry.nhs_number_changes (
    event_id               text PRIMARY KEY,
    nhs_number             text NOT NULL,
    kind                   text NOT NULL CHECK (kind IN ('superseded', 'inactive')),
    replacement_nhs_number text,
    effective_date         date NOT NULL,
    recorded_at            timestamptz NOT NULL DEFAULT now(),
    affected_councils      text[] NOT NULL,
    affected_references    text[] NOT NULL,
    affected_plan_types    int2[] NOT NULL,
    CHECK ((kind = 'superseded') = (replacement_nhs_number IS NOT NULL))
);
CREATE INDEX nhs_number_changes_by_number ON registry.nhs_number_changes (nhs_number);
CREATE INDEX nhs_number_changes_by_replacement
    ON registry.nhs_number_changes (replacement_nhs_number) WHERE kind = 'superseded';
