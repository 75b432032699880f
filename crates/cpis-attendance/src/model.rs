//! The service's own plain types: what the store reads and writes and what
//! the rules decide on. No protobuf here (`convert` builds the contract's
//! messages from these).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One attendance of a flagged person at an unscheduled-care setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// The episode's id (UUIDv7).
    pub episode_id: Uuid,
    /// ODS code of the setting.
    pub setting_code: String,
    /// The kind of setting (`SettingType` as stored).
    pub setting_type: i32,
    /// When the person arrived (microsecond precision, as stored).
    pub arrived_at: DateTime<Utc>,
}

/// One row of the access audit: who was shown a flag, where and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The access's id (UUIDv7).
    pub access_id: Uuid,
    /// The episode of a notifying read; `None` for silent and episode reads.
    pub episode_id: Option<Uuid>,
    /// The person's NHS number.
    pub nhs_number: String,
    /// ODS code of the setting.
    pub setting_code: String,
    /// The kind of setting (0 for an episode read).
    pub setting_type: i32,
    /// Who at the setting was shown the flags.
    pub viewer: RecordedViewer,
    /// When.
    pub accessed_at: DateTime<Utc>,
    /// A silent read (scheduled care).
    pub silent: bool,
    /// A read of the person's episodes (ListEpisodes, AuditEvent).
    pub episodes_read: bool,
    /// A scheduled-care setting's record that the person was not brought.
    pub was_not_brought: bool,
    /// When the missed appointment was (`was_not_brought` only).
    pub appointment_at: Option<DateTime<Utc>>,
}

/// The person an access records, as stored: the verified person's ids, name,
/// role and organisation, or the id a setting asserted (`verified` false).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RecordedViewer {
    /// SDS user id, or the asserted id.
    pub user_id: String,
    /// The person's name (empty when unverified).
    pub name: String,
    /// SDS role profile id of the role in use.
    pub role_profile_id: String,
    /// The role's full code (`S8000:G8000:R8000`).
    pub role_code: String,
    /// The job role's name.
    pub job_role_name: String,
    /// ODS code of the role's organisation.
    pub org_code: String,
    /// Name of that organisation, when known.
    pub org_name: String,
    /// True when a verified token named the person.
    pub verified: bool,
}

impl std::fmt::Debug for RecordedViewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A person's name and ids never reach a log line.
        f.debug_struct("RecordedViewer").field("verified", &self.verified).finish_non_exhaustive()
    }
}

impl From<&cpis_domain::Viewer> for RecordedViewer {
    fn from(viewer: &cpis_domain::Viewer) -> Self {
        match viewer {
            cpis_domain::Viewer::Verified(user) => Self {
                user_id: user.user_id.clone(),
                name: user.name.clone(),
                role_profile_id: user.role.role_profile_id.clone(),
                role_code: user.role.role_code.clone(),
                job_role_name: user.role.job_role_name(),
                org_code: user.role.org_code.clone(),
                org_name: user.org_name.clone(),
                verified: true,
            },
            cpis_domain::Viewer::Unverified { user_id } => Self { user_id: user_id.clone(), ..Self::default() },
        }
    }
}

/// A stored first answer to a check-in request.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// SHA-256 of the first request's body (without its request_id).
    pub fingerprint: Vec<u8>,
    /// The encoded answer given the first time (replayed byte for byte).
    pub response: Vec<u8>,
}

/// One council to alert about a flagged arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertTarget {
    /// The council holding the flag.
    pub council_code: String,
    /// The kind of the council's plan.
    pub plan_type: i32,
    /// The council's case reference of the plan.
    pub local_reference: String,
}

/// The rows one flagged check-in adds, written by one statement
/// (`store::checkin::insert_flagged`, or `store::grouped::insert_group`
/// for a group of them).
#[derive(Debug, Clone)]
pub struct FlaggedRows<'a> {
    /// The episode the arrival belongs to.
    pub episode: &'a Episode,
    /// True when the episode is new (to be inserted), false when the arrival
    /// joins an earlier one.
    pub new_episode: bool,
    /// The person's NHS number (validated).
    pub nhs_number: &'a str,
    /// ODS code of the calling setting.
    pub setting_code: &'a str,
    /// The kind of the calling setting.
    pub setting_type: i32,
    /// Who at the setting is shown the flags.
    pub viewer: &'a RecordedViewer,
    /// The viewer as the alerts carry it (an encoded `cpis.common.v1.Viewer`).
    pub alert_viewer: &'a [u8],
    /// The councils to alert, in council-code order (the order their outbox
    /// position counters are locked in).
    pub alerts: &'a [AlertTarget],
    /// The alerts' priority (`AlertPriority` as stored).
    pub priority: i32,
    /// The check-in's W3C trace context, for the relay.
    pub traceparent: Option<&'a str>,
    /// The client's idempotency key.
    pub request_id: &'a str,
    /// SHA-256 of the request body without its request_id.
    pub fingerprint: &'a [u8],
    /// The encoded answer, stored for replays.
    pub response: &'a [u8],
}

/// What writing a flagged check-in's rows did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// Outbox rows added (councils not yet alerted about the episode).
    pub alerts_queued: i64,
    /// False when another request with the same request_id stored its answer
    /// first: the transaction must then be rolled back.
    pub request_stored: bool,
}
