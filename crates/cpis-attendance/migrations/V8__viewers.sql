-- Who looked: the person behind each access, and on each alert.
-- The person a setting's verified user token names (CIS2 claims): SDS
-- user id (user_id, as before), name, the role in use (SDS role profile
-- id, role code and job role name) and the organisation it is held at.
-- `verified` is false for accesses recorded before verified users existed
-- and for those made without a token while CPIS_USER_AUTH=optional.
ALTER TABLE attendance.accesses
    ADD COLUMN viewer_name     text NOT NULL DEFAULT '',
    ADD COLUMN role_profile_id text NOT NULL DEFAULT '',
    ADD COLUMN role_code       text NOT NULL DEFAULT '',
    ADD COLUMN job_role_name   text NOT NULL DEFAULT '',
    ADD COLUMN org_code        text NOT NULL DEFAULT '',
    ADD COLUMN org_name        text NOT NULL DEFAULT '',
    ADD COLUMN verified        boolean NOT NULL DEFAULT false;
-- The viewer as the alert carries it (an encoded cpis.common.v1.Viewer).
ALTER TABLE attendance.outbox ADD COLUMN viewer bytea;
