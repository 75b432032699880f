-- The publish function of V4, with the sequence in the notification
-- (`council:sequence`), so every instance knows each council's latest
-- sequence without reading it, and an idle stream reads nothing. The rest
-- of the function is unchanged.
CREATE OR REPLACE FUNCTION notification.publish_alert(
    p_council text, p_alert_id uuid, p_episode text, p_nhs_number text, p_plan_type integer,
    p_local_reference text, p_setting_code text, p_setting_type integer, p_arrived_at timestamptz,
    p_priority integer, p_traceparent text)
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
            plan_type, local_reference, setting_code, setting_type, arrived_at, priority, traceparent)
        VALUES (p_council, v_sequence, p_alert_id, p_episode, p_nhs_number, p_plan_type,
            p_local_reference, p_setting_code, p_setting_type, p_arrived_at, p_priority, p_traceparent);
    EXCEPTION WHEN unique_violation THEN
        RETURN QUERY SELECT a.alert_id, a.sequence, false FROM notification.alerts a
            WHERE a.council_code = p_council AND a.episode_id = p_episode;
        RETURN;
    END;
    PERFORM pg_notify('cpis_notification_alert', p_council || ':' || v_sequence);
    RETURN QUERY SELECT p_alert_id, v_sequence, true;
END
$fn$;
