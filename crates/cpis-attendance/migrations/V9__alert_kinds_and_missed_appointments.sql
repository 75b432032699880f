-- Alert kinds in the outbox; missed appointments in the access audit.
-- The outbox carries every kind of alert by the same relay, in the same
-- per-council order (`position`). An attendance's row has its episode as
-- before (`kind` NULL). A row of another kind (was not brought, NHS number
-- superseded or inactive) has no episode: `alert_key` is its idempotency key
-- with the council (`wnb:<record id>`, `nhs-number:<event id>`) and
-- `request` the PublishAlertRequest to send, encoded.
ALTER TABLE attendance.outbox
    ADD COLUMN kind integer,
    ADD COLUMN alert_key text,
    ADD COLUMN request bytea,
    ALTER COLUMN episode_id DROP NOT NULL,
    ALTER COLUMN setting_code DROP NOT NULL,
    ALTER COLUMN setting_type DROP NOT NULL,
    ALTER COLUMN arrived_at DROP NOT NULL;
CREATE UNIQUE INDEX outbox_by_key ON attendance.outbox (alert_key, council_code) WHERE alert_key IS NOT NULL;

-- A scheduled-care setting's record that a flagged person was not brought
-- to an appointment: an access row (who recorded it, where, when, for which
-- councils) with the appointment's time. One per setting, person and
-- appointment: a repeat records nothing new.
ALTER TABLE attendance.accesses
    ADD COLUMN was_not_brought boolean NOT NULL DEFAULT false,
    ADD COLUMN appointment_at timestamptz;
CREATE UNIQUE INDEX missed_appointments_once
    ON attendance.accesses (setting_code, nhs_number, appointment_at) WHERE was_not_brought;
