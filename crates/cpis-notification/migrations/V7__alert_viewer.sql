-- Who looked, on each alert.
-- The person at the setting who was shown the flag (an encoded
-- cpis.common.v1.Viewer: name, SDS user id, role profile, job role,
-- organisation), as the Attendance service verified them. NULL on alerts
-- stored before verified users existed.
ALTER TABLE notification.alerts ADD COLUMN viewer bytea;

-- publish_alert (V5) and publish_alerts (V6) with the viewer, as overloads
-- with one more argument: instances still running the previous release call
-- the old ones during a rolling upgrade, which keep working (a later
-- release drops them). Nothing else changes.
CREATE FUNCTION notification.publish_alert(
    p_council text, p_alert_id uuid, p_episode text, p_nhs_number text, p_plan_type integer,
    p_local_reference text, p_setting_code text, p_setting_type integer, p_arrived_at timestamptz,
    p_priority integer, p_traceparent text, p_viewer bytea)
RETURNS TABLE (o_alert_id uuid, o_sequence bigint, o_created boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_sequence bigint;
BEGIN
    RETURN QUERY SELECT a.alert_id, a.sequence, false FROM notification.alerts a
        WHERE a.council_code = p_council AND a.episode_id = p_episode;
    IF FOUND THEN
        RETURN;
    END IF;
    BEGIN
        INSERT INTO notification.council_sequences AS c (council_code, last_sequence)
        VALUES (p_council, 1)
        ON CONFLICT (council_code) DO UPDATE SET last_sequence = c.last_sequence + 1
        RETURNING c.last_sequence INTO v_sequence;
        INSERT INTO notification.alerts (council_code, sequence, alert_id, episode_id, nhs_number,
            plan_type, local_reference, setting_code, setting_type, arrived_at, priority, traceparent, viewer)
        VALUES (p_council, v_sequence, p_alert_id, p_episode, p_nhs_number, p_plan_type,
            p_local_reference, p_setting_code, p_setting_type, p_arrived_at, p_priority, p_traceparent, p_viewer);
    EXCEPTION WHEN unique_violation THEN
        RETURN QUERY SELECT a.alert_id, a.sequence, false FROM notification.alerts a
            WHERE a.council_code = p_council AND a.episode_id = p_episode;
        RETURN;
    END;
    PERFORM pg_notify('cpis_notification_alert', p_council || ':' || v_sequence);
    RETURN QUERY SELECT p_alert_id, v_sequence, true;
END
$fn$;

CREATE FUNCTION notification.publish_alerts(
    p_councils text[], p_alert_ids uuid[], p_episodes text[], p_nhs_numbers text[], p_plan_types integer[],
    p_local_references text[], p_setting_codes text[], p_setting_types integer[], p_arrived_at timestamptz[],
    p_priorities integer[], p_traceparent text, p_viewers bytea[])
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
            plan_type, local_reference, setting_code, setting_type, arrived_at, priority, traceparent, viewer)
        VALUES (v_council, v_sequence, p_alert_ids[v_i], p_episodes[v_i], p_nhs_numbers[v_i],
            p_plan_types[v_i], p_local_references[v_i], p_setting_codes[v_i], p_setting_types[v_i],
            p_arrived_at[v_i], p_priorities[v_i], p_traceparent, p_viewers[v_i]);
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
