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
/// change history recorded then: the weightiest of them (a deletion over a
/// creation over an end over an update).
pub fn conflict_change(actions: &[String]) -> pb::SyncConflictChange {
    let did = |what: &str| actions.iter().any(|a| a == what);
    if did("deleted") {
        pb::SyncConflictChange::Deleted
    } else if did("created") {
        pb::SyncConflictChange::Created
    } else if did("ended") {
        pb::SyncConflictChange::Ended
    } else {
        pb::SyncConflictChange::Updated
    }
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
    fn a_conflict_names_the_weightiest_change() {
        let actions = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(conflict_change(&actions(&["updated"])), pb::SyncConflictChange::Updated);
        assert_eq!(conflict_change(&actions(&["updated", "ended"])), pb::SyncConflictChange::Ended);
        assert_eq!(conflict_change(&actions(&["created", "updated"])), pb::SyncConflictChange::Created);
        assert_eq!(conflict_change(&actions(&["created", "deleted"])), pb::SyncConflictChange::Deleted);
        let c = conflict("X-1".into(), &actions(&["ended"]));
        assert_eq!(c.change, pb::SyncConflictChange::Ended as i32);
        assert!(c.reason.contains("not re-opened"), "{}", c.reason);
    }
}
