-- Fewer writes per alert (issue 27, goal 4).
--
-- Each council's relay row keeps `delivered_through`: every outbox row of
-- the council at or below that position has been delivered. The relay
-- delivers a council's rows strictly in position order (a position becomes
-- visible only after every lower one of its council: the counter row stays
-- locked until the inserting transaction ends), so the delivered rows are
-- always a prefix of the council's queue and one number describes them.
-- The relay finds the councils with work by comparing it with the
-- council's counter (`outbox_positions`: two tables of one row per council)
-- and reads a council's next rows from it on `outbox_by_council_position`,
-- so the partial index of undelivered rows (an entry written by every
-- insert, and the row's entries written again by every delivery) goes.
-- `delivered_at` stays the mark of each row (what retention, metrics and
-- operators read): a row above `delivered_through` with `delivered_at` set
-- (marked by a relay of the previous release during a rolling upgrade) is
-- skipped, never sent twice out of order.
ALTER TABLE attendance.relay_councils ADD COLUMN delivered_through bigint NOT NULL DEFAULT 0;
INSERT INTO attendance.relay_councils (council_code)
SELECT council_code FROM attendance.outbox_positions
ON CONFLICT (council_code) DO NOTHING;
UPDATE attendance.relay_councils r
SET delivered_through = COALESCE(
    (SELECT min(o.position) - 1 FROM attendance.outbox o
     WHERE o.council_code = r.council_code AND o.delivered_at IS NULL),
    (SELECT p.last_position FROM attendance.outbox_positions p WHERE p.council_code = r.council_code),
    0);
DROP INDEX attendance.outbox_pending_by_council;

-- Marking a row delivered now changes no indexed column, so with room on
-- its page the update is HOT: no index entry is written. Half of each new
-- page is left for those updates (a delivered row is written once more).
ALTER TABLE attendance.outbox SET (fillfactor = 50);
