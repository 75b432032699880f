-- Trace context of each alert.
-- The W3C traceparent of the PublishAlert call, so the stream send to
-- the council joins the check-in's trace. Ids only: no personal data.
ALTER TABLE notification.alerts ADD COLUMN traceparent text;
