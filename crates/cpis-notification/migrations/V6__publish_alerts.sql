-- `notification.publish_alerts`: the whole of `PublishAlerts` in one
-- statement, so one transaction (and one commit) stores the batch, all or
-- nothing. Each alert goes as in publish_alert (V4, V5) (repeat check, counter
-- bump, insert), with two differences:
--
-- - the alerts are taken in council-code order (request order within a
--   council), so every batch takes the counter locks of its councils in the
--   same order and two concurrent batches cannot deadlock; each council's
--   alerts still get consecutive sequences in request order;
-- - a repeat that another publisher committed while this one waited for the
--   counter is found by a second look once the lock is held (each statement
--   of a plpgsql function sees what committed before it started), and the
--   bump is undone in place: no exception blocks, so a batch of 500 does not
--   open 500 subtransactions.
--
-- Returns one row per alert with its 1-based index in the arrays.
CREATE FUNCTION notification.publish_alerts(
    p_councils text[], p_alert_ids uuid[], p_episodes text[], p_nhs_numbers text[], p_plan_types integer[],
    p_local_references text[], p_setting_codes text[], p_setting_types integer[], p_arrived_at timestamptz[],
    p_priorities integer[], p_traceparent text)
RETURNS TABLE (o_index integer, o_alert_id uuid, o_sequence bigint, o_created boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_i integer;
    v_council text;
    v_sequence bigint;
    v_found_id uuid;
    v_found_sequence bigint;
    v_woken text[] := '{}';
BEGIN
    FOR v_i IN
        SELECT t.idx::integer FROM unnest(p_councils) WITH ORDINALITY AS t(code, idx) ORDER BY t.code, t.idx
    LOOP
        v_council := p_councils[v_i];
        SELECT a.alert_id, a.sequence INTO v_found_id, v_found_sequence FROM notification.alerts a
            WHERE a.council_code = v_council AND a.episode_id = p_episodes[v_i];
        IF FOUND THEN
            RETURN QUERY SELECT v_i, v_found_id, v_found_sequence, false;
            CONTINUE;
        END IF;
        INSERT INTO notification.council_sequences AS c (council_code, last_sequence)
        VALUES (v_council, 1)
        ON CONFLICT (council_code) DO UPDATE SET last_sequence = c.last_sequence + 1
        RETURNING c.last_sequence INTO v_sequence;
        SELECT a.alert_id, a.sequence INTO v_found_id, v_found_sequence FROM notification.alerts a
            WHERE a.council_code = v_council AND a.episode_id = p_episodes[v_i];
        IF FOUND THEN
            IF v_sequence = 1 THEN
                DELETE FROM notification.council_sequences WHERE council_code = v_council;
            ELSE
                UPDATE notification.council_sequences SET last_sequence = last_sequence - 1
                    WHERE council_code = v_council;
            END IF;
            RETURN QUERY SELECT v_i, v_found_id, v_found_sequence, false;
            CONTINUE;
        END IF;
        INSERT INTO notification.alerts (council_code, sequence, alert_id, episode_id, nhs_number,
            plan_type, local_reference, setting_code, setting_type, arrived_at, priority, traceparent)
        VALUES (v_council, v_sequence, p_alert_ids[v_i], p_episodes[v_i], p_nhs_numbers[v_i],
            p_plan_types[v_i], p_local_references[v_i], p_setting_codes[v_i], p_setting_types[v_i],
            p_arrived_at[v_i], p_priorities[v_i], p_traceparent);
        IF NOT v_council = ANY(v_woken) THEN
            v_woken := v_woken || v_council;
        END IF;
        RETURN QUERY SELECT v_i, p_alert_ids[v_i], v_sequence, true;
    END LOOP;
    -- One wake-up per council, with its latest sequence (`council:sequence`,
    -- as publish_alert since V5): idle streams elsewhere need no query.
    PERFORM pg_notify('cpis_notification_alert', c.council_code || ':' || c.last_sequence)
        FROM notification.council_sequences c WHERE c.council_code = ANY(v_woken);
END
$fn$;
