//! The one place the service's own types become the contract's messages.

use crate::model::{Access, Episode, RecordedViewer};
use cpis_domain::time::to_timestamp;
use cpis_proto::attendance::v1 as pb;
use cpis_proto::common::v1 as common;

/// An episode as the contract carries it.
pub fn episode(e: &Episode) -> common::Episode {
    common::Episode {
        episode_id: e.episode_id.to_string(),
        setting_code: e.setting_code.clone(),
        setting_type: e.setting_type,
        arrived_at: Some(to_timestamp(e.arrived_at)),
    }
}

/// Episodes as the contract carries them, in the same order.
pub fn episodes(es: &[Episode]) -> Vec<common::Episode> {
    es.iter().map(episode).collect()
}

/// An access audit row as the contract carries it.
pub fn access(a: &Access) -> pb::AccessRecord {
    pb::AccessRecord {
        access_id: a.access_id.to_string(),
        episode_id: a.episode_id.map(|id| id.to_string()).unwrap_or_default(),
        nhs_number: a.nhs_number.clone(),
        setting_code: a.setting_code.clone(),
        setting_type: a.setting_type,
        user_id: a.viewer.user_id.clone(),
        accessed_at: Some(to_timestamp(a.accessed_at)),
        silent: a.silent,
        episodes_read: a.episodes_read,
        viewer: Some(viewer(&a.viewer)),
        was_not_brought: a.was_not_brought,
        appointment_at: a.appointment_at.map(to_timestamp),
    }
}

/// The person who looked, as the contract carries them (on access records and alerts).
pub fn viewer(v: &RecordedViewer) -> common::Viewer {
    common::Viewer {
        user_id: v.user_id.clone(),
        name: v.name.clone(),
        role_profile_id: v.role_profile_id.clone(),
        job_role_code: v.role_code.rsplit(':').next().unwrap_or_default().to_string(),
        job_role_name: v.job_role_name.clone(),
        organisation_code: v.org_code.clone(),
        organisation_name: v.org_name.clone(),
        verified: v.verified,
        role_code: v.role_code.clone(),
    }
}

/// The answer to a flagged check-in: the flags shown, the episode, and the
/// person's previous episodes.
pub fn flagged_check_in(flags: Vec<common::Flag>, episode: &Episode, previous: &[Episode]) -> pb::CheckInResponse {
    pb::CheckInResponse {
        flagged: true,
        flags,
        episode_id: episode.episode_id.to_string(),
        previous_episodes: episodes(previous),
    }
}

/// A stored check-in answer, for a replay.
pub fn stored_check_in(encoded: &[u8]) -> Result<pb::CheckInResponse, cpis_runtime::ApiError> {
    use prost::Message;
    pb::CheckInResponse::decode(encoded)
        .map_err(|e| cpis_runtime::ApiError::internal(format!("stored check-in response: {e}")))
}
