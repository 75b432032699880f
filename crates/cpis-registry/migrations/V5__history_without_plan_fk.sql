-- The change history loses its foreign key to registry.plans. Its check (a
-- locking look-up of the plan, one per history row) cost a bulk SyncPlans
-- about as much as writing the history itself. What it guarded still holds
-- by construction: a history row is written only by the statement that
-- writes its plan, with the plan_id that write returns, and a plan is never
-- deleted but by the purge (`cpis purge`), which deletes its history first
-- (registry.refuse_history_rewrite keeps the history append-only otherwise).
ALTER TABLE registry.plan_changes DROP CONSTRAINT plan_changes_plan_id_fkey;
