-- Trace context of outbox rows.
-- The W3C traceparent of the check-in, so the relay's publish joins the
-- check-in's trace. Ids only: no personal data.
ALTER TABLE attendance.outbox ADD COLUMN traceparent text;
