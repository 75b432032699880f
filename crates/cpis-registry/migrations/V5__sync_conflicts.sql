-- What an upload saw: the last plan change (registry.plan_changes.change_id)
-- handed out when it was claimed, under the council's exclusive lock. A
-- change with a higher id was made after the upload started; its apply
-- leaves that plan as it stands and reports a conflict. NULL for an upload
-- claimed before this column existed (nothing is reported for it).
ALTER TABLE registry.sync_uploads ADD COLUMN changes_seen bigint;
