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
    pub user_id: String,
    /// When.
    pub accessed_at: DateTime<Utc>,
    /// A silent read (scheduled care).
    pub silent: bool,
    /// A read of the person's episodes (ListEpisodes, AuditEvent).
    pub episodes_read: bool,
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
/// (`store::checkin::insert_flagged`).
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
    pub user_id: &'a str,
    /// The councils to alert, in council-code order (the order their outbox
    /// position counters are locked in).
    pub alerts: &'a [AlertTarget],
    /// The alerts' priority (`AlertPriority` as stored).
    pub priority: i32,
    /// The check-in's W3C trace context, for the relay.
    pub traceparent: Option<String>,
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
