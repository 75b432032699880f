-- A council's deleted plans, found without a scan of the register (issue 27).
--
-- An upload's apply asks which of the council's plans another call changed
-- after the upload was claimed, deleted ones included (a plan deleted
-- meanwhile is a conflict too). The live ones have `plans_council_reference`;
-- without an index for the others the planner scanned the whole register
-- for every upload. This index holds deleted plans only (a plan is deleted
-- rarely, entered in error), so no insert or update of a live plan writes it.
CREATE INDEX plans_deleted_by_council ON registry.plans (council_code) WHERE deleted_at IS NOT NULL;
