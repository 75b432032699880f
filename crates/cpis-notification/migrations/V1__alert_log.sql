-- Alert log, counters and acknowledgements.
-- One row per council: the last sequence handed out. Updating it takes
-- the row lock that serialises publishers of one council.
CREATE TABLE notification.council_sequences (
    council_code  text PRIMARY KEY,
    last_sequence bigint NOT NULL CHECK (last_sequence >= 1)
);

-- The alert log. Streams read it by (council_code, sequence).
CREATE TABLE notification.alerts (
    council_code    text NOT NULL,
    sequence        bigint NOT NULL CHECK (sequence >= 1),
    alert_id        uuid NOT NULL UNIQUE,
    episode_id      text NOT NULL,
    nhs_number      text NOT NULL,
    plan_type       integer NOT NULL,
    local_reference text NOT NULL,
    setting_code    text NOT NULL,
    setting_type    integer NOT NULL,
    arrived_at      timestamptz NOT NULL,
    priority        integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (council_code, sequence),
    -- PublishAlert is idempotent by council and episode.
    CONSTRAINT alerts_council_episode_key UNIQUE (council_code, episode_id)
);

-- One row per council: everything up to here has been received.
CREATE TABLE notification.acks (
    council_code         text PRIMARY KEY,
    acknowledged_through bigint NOT NULL CHECK (acknowledged_through >= 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
