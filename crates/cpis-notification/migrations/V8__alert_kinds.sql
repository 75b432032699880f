-- Alert kinds.
-- Every kind of alert (attendance, repeat attendance, was not brought, NHS
-- number superseded or inactive) is a row of the same log, with the same
-- gapless per-council sequence. `kind` is the AlertKind (NULL on rows
-- stored before kinds existed: an attendance, by its priority); `detail`
-- the kind's own message, encoded (MissedAppointment, NhsNumberNotice). An
-- NHS number notice has no setting, so the setting columns may be NULL.
-- `episode_id` stays the idempotency key with the council: the episode id
-- of an attendance, `wnb:<record id>`, `nhs-number:<event id>`.
ALTER TABLE notification.alerts
    ADD COLUMN kind integer,
    ADD COLUMN detail bytea,
    ALTER COLUMN setting_code DROP NOT NULL,
    ALTER COLUMN setting_type DROP NOT NULL,
    ALTER COLUMN arrived_at DROP NOT NULL;

-- publish_alert and publish_alerts (V7) with the kind and its details, as
-- overloads with more arguments (the earlier ones keep serving instances of
-- the previous release during a rolling upgrade). Nothing else changes.
CREATE FUNCTION notification.publish_alert(
    p_council text, p_alert_id uuid, p_episode text, p_nhs_number text, p_plan_type integer,
    p_local_reference text, p_setting_code text, p_setting_type integer, p_arrived_at timestamptz,
    p_priority integer, p_traceparent text, p_viewer bytea, p_kind integer, p_detail bytea)
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
            plan_type, local_reference, setting_code, setting_type, arrived_at, priority, traceparent, viewer, kind, detail)
        VALUES (p_council, v_sequence, p_alert_id, p_episode, p_nhs_number, p_plan_type,
            p_local_reference, p_setting_code, p_setting_type, p_arrived_at, p_priority, p_traceparent, p_viewer, p_kind, p_detail);
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
    p_priorities integer[], p_traceparent text, p_viewers bytea[], p_kinds integer[],
    p_details bytea[])
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
            plan_type, local_reference, setting_code, setting_type, arrived_at, priority, traceparent, viewer, kind, detail)
        VALUES (v_council, v_sequence, p_alert_ids[v_i], p_episodes[v_i], p_nhs_numbers[v_i],
            p_plan_types[v_i], p_local_references[v_i], p_setting_codes[v_i], p_setting_types[v_i],
            p_arrived_at[v_i], p_priorities[v_i], p_traceparent, p_viewers[v_i], p_kinds[v_i], p_details[v_i]);
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
