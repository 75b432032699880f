-- When each acknowledgement arrived.
-- One row each time a council's acknowledgement moved forward: everything up
-- to `up_to_sequence` was held by its system at `acked_at`. A report's time
-- to acknowledge an alert is the first such row covering it, minus its
-- creation. Kept as long as acknowledged alerts (`cpis purge`).
CREATE TABLE notification.ack_history (
    council_code   text NOT NULL,
    up_to_sequence bigint NOT NULL,
    acked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (council_code, up_to_sequence)
);
