-- Episodes, accesses, check-in requests, outbox.
CREATE TABLE attendance.episodes (
    episode_id   uuid PRIMARY KEY,
    nhs_number   text NOT NULL,
    setting_code text NOT NULL,
    setting_type integer NOT NULL,
    arrived_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- A person's history, most recent first (CheckIn, ListEpisodes, repeat count).
CREATE INDEX episodes_by_person
    ON attendance.episodes (nhs_number, arrived_at DESC, episode_id DESC);

-- Every time a flag was shown: who, where, when, and which councils held a
-- flag at that moment (they may list it later, even after the plan ends).
CREATE TABLE attendance.accesses (
    access_id     uuid PRIMARY KEY,
    episode_id    uuid NOT NULL REFERENCES attendance.episodes (episode_id),
    nhs_number    text NOT NULL,
    setting_code  text NOT NULL,
    setting_type  integer NOT NULL,
    user_id       text NOT NULL,
    accessed_at   timestamptz NOT NULL DEFAULT now(),
    council_codes text[] NOT NULL
);
CREATE INDEX accesses_by_council ON attendance.accesses USING gin (council_codes);
CREATE INDEX accesses_by_time ON attendance.accesses (accessed_at DESC, access_id DESC);
CREATE INDEX accesses_by_person
    ON attendance.accesses (nhs_number, accessed_at DESC, access_id DESC);

-- The first answer to each (setting, request_id), replayed on retries.
-- fingerprint is a SHA-256 of the request body without its request_id.
CREATE TABLE attendance.check_in_requests (
    setting_code text NOT NULL,
    request_id   text NOT NULL,
    fingerprint  bytea NOT NULL,
    response     bytea NOT NULL,
    episode_id   uuid NOT NULL REFERENCES attendance.episodes (episode_id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (setting_code, request_id)
);

-- Alerts waiting for the Notification service: one row per council per episode.
-- last_error holds a status code only, never personal data.
CREATE TABLE attendance.outbox (
    outbox_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    council_code    text NOT NULL,
    nhs_number      text NOT NULL,
    plan_type       integer NOT NULL,
    local_reference text NOT NULL,
    episode_id      uuid NOT NULL REFERENCES attendance.episodes (episode_id),
    setting_code    text NOT NULL,
    setting_type    integer NOT NULL,
    arrived_at      timestamptz NOT NULL,
    priority        integer NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (episode_id, council_code)
);
CREATE INDEX outbox_due ON attendance.outbox (next_attempt_at, outbox_id)
    WHERE delivered_at IS NULL;
