-- Plan ids of plans created by SyncPlans are time-ordered (UUID version 7,
-- RFC 9562: 48 bits of Unix milliseconds, then random bits), so a bulk
-- upload's new plans are appended at the right edge of the plan-id indexes
-- (registry.plans' key and registry.plan_changes' (plan_id, change_id))
-- instead of landing on random pages all over them, which once those
-- indexes outgrow the cache costs a page read and write per row.
-- Still unguessable: 74 random bits. PostgreSQL 15 has no uuidv7().
CREATE FUNCTION registry.new_plan_id() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
