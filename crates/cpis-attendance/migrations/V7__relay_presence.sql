-- Which outbox relays are alive, so that they share the councils: each pass
-- a relay renews its row and leases at most its share of the councils with
-- undelivered alerts (those councils divided by the live relays), instead
-- of the first relay to look taking nearly all of them. A relay that stops
-- deletes its row; one that vanishes counts until `alive_until` passes.
CREATE TABLE attendance.relays (
    relay_id    uuid PRIMARY KEY,
    alive_until timestamptz NOT NULL
);
