//! What the council's register held when its upload started, so that a row
//! identical to its plan is not staged at all (issue 27: a nightly re-send
//! changes about 0.1% of a council's list, and staging every row then
//! comparing them all in SQL was most of the night's database work).
//!
//! Each plan of the council is kept as its reference, a fingerprint of its
//! fields (the SHA-256 of [`columns::values`], the text that staging would
//! write, so a row and a plan match only when staging would have found no
//! field changed) and its NHS number. A row is then
//! - a duplicate, when an earlier row had its reference (the first counts,
//!   as in staging);
//! - unchanged, when its fingerprint is the plan's: counted, remembered by
//!   its row number, and not staged;
//! - otherwise staged, as before.
//!
//! At the apply, the plans no row mentioned are the absent ones the snapshot
//! ends ([`KnownPlans::absent`]); the apply's other statements read only
//! staged rows, so an unchanged row needs nothing there. The one check an
//! unchanged row still needs is of its NHS number (superseded or inactive
//! since): [`KnownPlans::numbers_of_unchanged`].
//!
//! Loaded after the upload's claim, outside the council's lock: a plan
//! changed between the claim and the load was changed after the claim, so
//! the apply leaves it alone (a conflict) whatever its row said, exactly as
//! it would have with every row staged.

use crate::model::PlanInput;
use crate::store::{changes, columns};
use cpis_proto::registry::v1 as pb;
use cpis_runtime::ApiError;
use futures::TryStreamExt as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tokio_postgres::GenericClient;

/// 128 bits of the SHA-256 of a plan's fields.
type Fingerprint = [u8; 16];

/// A plan of the council at the claim.
#[derive(Debug)]
struct Known {
    fingerprint: Fingerprint,
    nhs_number: Box<str>,
    /// A row of the upload had its reference.
    seen: bool,
    /// The row that matched it exactly, when one did (and was not refused since).
    unchanged_row: Option<i64>,
}

/// What to do with a valid row.
#[derive(Debug, PartialEq, Eq)]
pub enum Sighting {
    /// An earlier row had this reference.
    Duplicate,
    /// Identical to the stored plan: counted, not staged.
    Unchanged,
    /// New or changed: staged.
    Stage,
}

/// The council's plans at the claim, by reference.
#[derive(Debug, Default)]
pub struct KnownPlans {
    plans: HashMap<Box<str>, Known>,
    unchanged: i64,
}

/// The fingerprint of a plan's fields.
fn fingerprint(p: &PlanInput) -> Fingerprint {
    let mut hash = Sha256::new();
    for value in columns::values(p) {
        match value {
            None => hash.update([0u8]),
            Some(text) => {
                hash.update([1u8]);
                hash.update((text.len() as u64).to_le_bytes());
                hash.update(text.as_bytes());
            }
        }
    }
    let digest: [u8; 32] = hash.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

impl KnownPlans {
    /// Reads `council`'s plans (every one not deleted), row by row: what is
    /// kept is about a hundred bytes a plan, never the rows themselves.
    pub async fn load(client: &impl GenericClient, council: &str) -> Result<Self, ApiError> {
        let sql = format!(
            "SELECT {} FROM registry.plans WHERE council_code = $1 AND deleted_at IS NULL",
            columns::PLAN_COLUMNS.as_str()
        );
        let rows = client.query_raw(sql.as_str(), [council]).await?;
        futures::pin_mut!(rows);
        let mut plans = HashMap::new();
        while let Some(row) = rows.try_next().await? {
            let stored = columns::plan_from_row(&row)?;
            let known = Known {
                fingerprint: fingerprint(&stored.input),
                nhs_number: stored.input.nhs_number.as_str().to_string().into_boxed_str(),
                seen: false,
                unchanged_row: None,
            };
            plans.insert(stored.input.local_reference.into_boxed_str(), known);
        }
        plans.shrink_to_fit();
        Ok(Self { plans, unchanged: 0 })
    }

    /// Judges valid row `row`.
    pub fn see_valid(&mut self, row: i64, input: &PlanInput) -> Sighting {
        let Some(known) = self.plans.get_mut(input.local_reference.as_str()) else { return Sighting::Stage };
        if known.seen {
            return Sighting::Duplicate;
        }
        known.seen = true;
        if known.fingerprint == fingerprint(input) {
            known.unchanged_row = Some(row);
            self.unchanged += 1;
            return Sighting::Unchanged;
        }
        Sighting::Stage
    }

    /// Notes a refused row's (well-formed) reference: it protects its plan
    /// from being ended, and a later row of it is a duplicate.
    pub fn see_refused(&mut self, reference: &str) {
        if let Some(known) = self.plans.get_mut(reference) {
            known.seen = true;
        }
    }

    /// Rows found unchanged (and not refused since).
    pub fn unchanged(&self) -> i64 {
        self.unchanged
    }

    /// Whether `reference` had an unchanged row.
    pub fn had_unchanged_row(&self, reference: &str) -> bool {
        self.plans.get(reference).is_some_and(|k| k.unchanged_row.is_some())
    }

    /// The references no row mentioned: the plans the snapshot leaves out.
    pub fn absent(&self) -> Vec<&str> {
        self.plans.iter().filter(|(_, k)| !k.seen).map(|(r, _)| &**r).collect()
    }

    /// `(NHS number, row, reference)` of every unchanged row.
    fn numbers_of_unchanged(&self) -> Vec<(String, i64, String)> {
        self.plans
            .iter()
            .filter_map(|(r, k)| k.unchanged_row.map(|row| (k.nhs_number.to_string(), row, r.to_string())))
            .collect()
    }

    /// Refuses the unchanged row of `reference` (its number was superseded):
    /// it still protects its plan, and no longer counts as unchanged.
    fn refuse_unchanged(&mut self, reference: &str) {
        if let Some(known) = self.plans.get_mut(reference) {
            if known.unchanged_row.take().is_some() {
                self.unchanged -= 1;
            }
        }
    }

    /// Judges the unchanged rows' NHS numbers as staged rows' are judged
    /// (`changes::refuse_superseded_rows`, `changes::inactive_rows`): a
    /// superseded number refuses its row (returned), an inactive one warns
    /// (returned as `(row, reference)`).
    pub async fn check_numbers(
        &mut self,
        tx: &impl GenericClient,
    ) -> Result<(Vec<pb::SyncRejection>, Vec<(i64, String)>), ApiError> {
        let rows = self.numbers_of_unchanged();
        let numbers: Vec<&str> = rows.iter().map(|(n, _, _)| n.as_str()).collect();
        let (superseded, inactive) = changes::number_flags(tx, &numbers).await?;
        let (mut refused, mut warned) = (Vec::new(), Vec::new());
        for (number, row, reference) in rows {
            if let Some(replacement) = superseded.get(&number) {
                self.refuse_unchanged(&reference);
                refused.push(superseded_rejection(row, reference, replacement.clone()));
            } else if inactive.contains(&number) {
                warned.push((row, reference));
            }
        }
        Ok((refused, warned))
    }
}

/// The refusal of row `row` for a superseded NHS number (the national result
/// "superseded NHS number"), the replacement in its own field.
pub fn superseded_rejection(row: i64, local_reference: String, replacement: String) -> pb::SyncRejection {
    pb::SyncRejection {
        local_reference,
        reason: crate::demographics::SUPERSEDED_REASON.into(),
        row,
        field: "plan.nhs_number".into(),
        replacement_nhs_number: replacement,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_proto::common::v1::PlanType;

    fn plan(reference: &str, team: &str) -> PlanInput {
        PlanInput {
            local_reference: reference.into(),
            nhs_number: cpis_domain::validate::NhsNumber::parse("9990000018").unwrap(),
            date_of_birth: chrono::NaiveDate::from_ymd_opt(2020, 1, 2),
            plan_type: PlanType::ChildProtection,
            start_date: chrono::NaiveDate::from_ymd_opt(2025, 3, 4).unwrap(),
            end_date: None,
            expected_delivery_date: None,
            contact: crate::model::Contact {
                team_name: team.into(),
                office_phone: "0161 000 0000".into(),
                emergency_duty_phone: "0161 000 0001".into(),
                email: "team@example.org".into(),
            },
        }
    }

    fn known(plans: &[PlanInput]) -> KnownPlans {
        let mut k = KnownPlans::default();
        for p in plans {
            let entry = Known {
                fingerprint: fingerprint(p),
                nhs_number: "9990000018".into(),
                seen: false,
                unchanged_row: None,
            };
            k.plans.insert(p.local_reference.clone().into_boxed_str(), entry);
        }
        k
    }

    #[test]
    fn identical_rows_are_not_staged_and_the_first_row_of_a_reference_counts() {
        let mut k = known(&[plan("A", "Front Door"), plan("B", "Front Door"), plan("C", "Front Door")]);
        assert_eq!(k.see_valid(1, &plan("A", "Front Door")), Sighting::Unchanged);
        assert_eq!(k.see_valid(2, &plan("B", "Front Door 2")), Sighting::Stage, "one field changed");
        assert_eq!(k.see_valid(3, &plan("N", "Front Door")), Sighting::Stage, "a new plan");
        assert_eq!(k.see_valid(4, &plan("A", "Other")), Sighting::Duplicate, "A's first row counts");
        assert_eq!(k.see_valid(5, &plan("B", "Front Door")), Sighting::Duplicate, "B's first row counts");
        assert_eq!(k.absent(), ["C"]);
        assert_eq!(k.unchanged(), 1);
        assert!(k.had_unchanged_row("A") && !k.had_unchanged_row("B"));
        k.see_refused("C");
        assert!(k.absent().is_empty(), "a refused row protects its plan");
        assert_eq!(k.see_valid(6, &plan("C", "Front Door")), Sighting::Duplicate);
        assert_eq!(k.numbers_of_unchanged(), [("9990000018".to_string(), 1, "A".to_string())]);
        k.refuse_unchanged("A");
        assert_eq!(k.unchanged(), 0);
        assert!(k.numbers_of_unchanged().is_empty());
    }

    #[test]
    fn the_fingerprint_tells_every_field_and_an_absent_value_from_an_empty_one() {
        let base = plan("A", "Front Door");
        let mut ended = base.clone();
        ended.end_date = chrono::NaiveDate::from_ymd_opt(2026, 1, 1);
        let mut phone = base.clone();
        phone.contact.office_phone = "0161 000 0002".into();
        let mut unborn = base.clone();
        unborn.date_of_birth = None;
        let prints = [&base, &ended, &phone, &unborn].map(fingerprint);
        for (i, a) in prints.iter().enumerate() {
            for b in &prints[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(fingerprint(&base), fingerprint(&base.clone()));
    }
}
