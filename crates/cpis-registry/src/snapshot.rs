//! What a `SyncPlans` snapshot may do, as plain rules (the statements are
//! in [`crate::store::uploads`]):
//!
//! - **The mass-end guard.** A snapshot that would end, or take out of
//!   scope, more than a share of the council's open plans is refused
//!   without `allow_mass_end`. Every way counts: plans absent from it,
//!   rows whose own `end_date` ends an open plan (a mis-mapped column that
//!   copies the start date), and rows that take a plan out of scope.
//! - **Conflicts.** A snapshot dates from before its upload started; a plan
//!   another call created, updated, ended or deleted since is left as that
//!   call made it, and reported, never undone.

use cpis_proto::registry::v1 as pb;

/// True when a snapshot that ends (or takes out of scope) `ending` of the
/// council's `open` open plans must be refused: more than `share` of them,
/// and the request did not say `allow_mass_end`.
pub fn mass_end_refused(ending: i64, open: i64, share: f64, allow_mass_end: bool) -> bool {
    ending > 0 && !allow_mass_end && (ending as f64) > share * (open as f64)
}

/// The refusal of a snapshot by the mass-end guard.
pub fn mass_end_refusal(ending: i64, open: i64, share: f64) -> String {
    format!(
        "this snapshot would end {ending} of the council's {open} open plans (plans absent from it, rows whose \
         end_date ends an open plan, and rows that take a plan out of scope), more than {:.0}%: nothing was \
         changed; if the list is complete and this is intended, resend it with allow_mass_end",
        share * 100.0
    )
}

/// What another call did to a plan during an upload, from the actions its
/// change history recorded then, in order: where the plan stands now as the
/// snapshot would misread it. A plan created during the upload is
/// `Created` whatever followed, unless deleted after; a deletion is
/// `Deleted` unless the reference was created again after; an end is
/// `Ended`, and later updates do not change that.
pub fn conflict_change(actions: &[String]) -> pb::SyncConflictChange {
    use pb::SyncConflictChange as C;
    actions.iter().fold(C::Unspecified, |now, action| match (action.as_str(), now) {
        ("created", _) => C::Created,
        ("deleted", _) => C::Deleted,
        ("ended" | "updated", C::Created) => C::Created,
        ("ended", _) => C::Ended,
        (_, C::Unspecified) => C::Updated,
        (_, now) => now,
    })
}

/// One conflict as the response lists it.
pub fn conflict(local_reference: String, actions: &[String]) -> pb::SyncConflict {
    let change = conflict_change(actions);
    let what = match change {
        pb::SyncConflictChange::Deleted => "deleted as entered in error (DeletePlan); not re-created",
        pb::SyncConflictChange::Created => "created (UpsertPlan); not ended or changed",
        pb::SyncConflictChange::Ended => "ended (EndPlan); not re-opened or changed",
        _ => "changed (UpsertPlan); not changed back",
    };
    pb::SyncConflict {
        local_reference,
        change: change as i32,
        reason: format!(
            "{what}: the plan was {} after this upload started, so the snapshot may not know of it; \
             the next snapshot, or UpsertPlan, EndPlan or DeletePlan, settles it",
            match change {
                pb::SyncConflictChange::Deleted => "deleted",
                pb::SyncConflictChange::Created => "created",
                pb::SyncConflictChange::Ended => "ended",
                _ => "changed",
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_counts_every_end_against_the_open_plans() {
        assert!(!mass_end_refused(0, 0, 0.1, false), "nothing ends");
        assert!(!mass_end_refused(1, 10, 0.1, false), "exactly the share");
        assert!(mass_end_refused(2, 10, 0.1, false), "more than the share");
        assert!(!mass_end_refused(2, 10, 0.1, true), "allowed");
        assert!(mass_end_refused(10, 10, 0.1, false), "every plan ended by its end_date");
        assert!(mass_end_refused(1, 0, 0.1, false), "out of scope with no open plan left");
        assert!(mass_end_refusal(10, 10, 0.1).contains("10 of the council's 10 open plans"));
    }

    #[test]
    fn a_conflict_names_where_the_plan_stands_after_the_changes() {
        use pb::SyncConflictChange as C;
        let actions = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (done, change) in [
            (&["updated"][..], C::Updated),
            (&["updated", "ended"], C::Ended),
            (&["ended", "updated"], C::Ended),
            (&["created", "updated"], C::Created),
            (&["created", "ended"], C::Created),
            (&["created", "deleted"], C::Deleted),
            (&["deleted", "created"], C::Created),
        ] {
            assert_eq!(conflict_change(&actions(done)), change, "{done:?}");
        }
        let c = conflict("X-1".into(), &actions(&["ended"]));
        assert_eq!(c.change, pb::SyncConflictChange::Ended as i32);
        assert!(c.reason.contains("not re-opened"), "{}", c.reason);
    }
}
