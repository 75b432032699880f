-- Per-council outbox order and relay leases.
-- Each council's outbox rows get a `position` in the order their check-ins
-- commit: a trigger bumps the council's counter row, whose lock is held
-- until the check-in commits, so a later position is never visible before an
-- earlier one. The relay publishes each council's rows by position, one
-- replica at a time per council (a lease in `relay_councils`, which also
-- holds the council's retry schedule: head of line first, never row by row).
CREATE TABLE attendance.outbox_positions (
    council_code  text PRIMARY KEY,
    last_position bigint NOT NULL
);
ALTER TABLE attendance.outbox ADD COLUMN position bigint;
UPDATE attendance.outbox o SET position = r.n
FROM (SELECT outbox_id, row_number() OVER (PARTITION BY council_code ORDER BY outbox_id) AS n
      FROM attendance.outbox) r
WHERE r.outbox_id = o.outbox_id;
INSERT INTO attendance.outbox_positions (council_code, last_position)
SELECT council_code, max(position) FROM attendance.outbox GROUP BY council_code;
ALTER TABLE attendance.outbox ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX outbox_by_council_position ON attendance.outbox (council_code, position);
CREATE INDEX outbox_pending_by_council ON attendance.outbox (council_code, position)
    WHERE delivered_at IS NULL;
DROP INDEX attendance.outbox_due;

CREATE FUNCTION attendance.outbox_position() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO attendance.outbox_positions AS p (council_code, last_position)
    VALUES (NEW.council_code, 1)
    ON CONFLICT (council_code) DO UPDATE SET last_position = p.last_position + 1
    RETURNING p.last_position INTO NEW.position;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER outbox_position BEFORE INSERT ON attendance.outbox
    FOR EACH ROW EXECUTE FUNCTION attendance.outbox_position();

-- One row per council the relay has worked on: which relay holds it until
-- when (a lease, not a lock: nothing is held across a PublishAlert call),
-- and when its head-of-line alert may be tried again.
CREATE TABLE attendance.relay_councils (
    council_code    text PRIMARY KEY,
    holder          uuid,
    lease_until     timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text
);
