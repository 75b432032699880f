//! The reads: a silent read by scheduled care, a person's episodes (for a
//! setting or a council) and a council's access audit. Need to know is
//! decided on every call by the Registry, never cached.

use crate::admitted;
use crate::convert;
use crate::model::{Episode, RecordedViewer};
use crate::page::{paginate, Cursor};
use crate::registry::{CallerDeadline, FlagLookup};
use crate::rules;
use crate::silent;
use crate::store::reads::{self as store, Read, ReadKind};
use cpis_domain::user::{Access, Viewer};
use cpis_domain::validate::{NhsNumber, Violations};
use cpis_proto::attendance::v1 as pb;
use cpis_runtime::db::DbPool;
use cpis_runtime::{ApiError, Caller};

/// The first steps of a setting's read of a person's history (episodes, or
/// the accesses to their flags): `viewer` must be allowed an episode read
/// (B0170 or B0107); a person with no flag in scope gives `None`, and
/// nothing is recorded; otherwise the read is recorded for the councils
/// holding the flags, and the connection that recorded it is returned for
/// the read itself.
pub(crate) async fn episode_read(
    pool: &DbPool,
    flags: &FlagLookup,
    setting_code: &str,
    nhs_number: &NhsNumber,
    viewer: &Viewer,
    deadline: CallerDeadline,
) -> Result<Option<deadpool_postgres::Object>, ApiError> {
    admitted::may(viewer, Access::EpisodeRead)?;
    let found = flags.lookup(nhs_number, None, deadline).await?;
    if found.flags.is_empty() {
        return Ok(None);
    }
    let db = pool.get().await?;
    let councils = rules::flag_councils(&found);
    let read = Read {
        kind: ReadKind::Episodes,
        setting_code,
        nhs_number: nhs_number.as_str(),
        setting_type: 0,
        viewer: &RecordedViewer::from(viewer),
        council_codes: &councils,
    };
    store::record_read(&db, &read).await?;
    Ok(Some(db))
}

/// The read operations and what they run on.
#[derive(Debug, Clone)]
pub struct Reads {
    pool: DbPool,
    flags: FlagLookup,
}

impl Reads {
    /// Reads of `pool`, asking the Registry through `flags`.
    pub fn new(pool: DbPool, flags: FlagLookup) -> Self {
        Self { pool, flags }
    }

    /// A silent read by the setting `setting_code` (scheduled care), shown
    /// to `viewer`: the access is audited for the councils holding a flag, as
    /// silent and as a read of the person's episodes (it returns the 25 most
    /// recent); no episode, no alert. An unflagged person leaves no trace.
    pub async fn silent_read(
        &self,
        setting_code: &str,
        viewer: &Viewer,
        req: &pb::SilentReadRequest,
        deadline: CallerDeadline,
    ) -> Result<pb::SilentReadResponse, ApiError> {
        admitted::may(viewer, Access::SilentRead)?;
        let valid = silent::validate(req)?;
        // The client's key identifies the request in logs only once it is
        // known to be short, printable text.
        tracing::Span::current().record("request_id", req.request_id.as_str());
        let found = self.flags.lookup(&valid.nhs_number, None, deadline).await?;
        // No log line says whether the person was flagged: beside a request
        // id, that would tell the log's readers who is on a plan.
        if found.flags.is_empty() {
            return Ok(pb::SilentReadResponse::default());
        }
        let councils = rules::flag_councils(&found);
        let db = self.pool.get().await?;
        let read = Read {
            kind: ReadKind::Silent,
            setting_code,
            nhs_number: valid.nhs_number.as_str(),
            setting_type: valid.setting_type as i32,
            viewer: &RecordedViewer::from(viewer),
            council_codes: &councils,
        };
        store::record_read(&db, &read).await?;
        let recent =
            store::list_episodes(&db, valid.nhs_number.as_str(), None, rules::PREVIOUS_EPISODES as i64).await?;
        Ok(pb::SilentReadResponse { flagged: true, flags: found.flags, recent_episodes: convert::episodes(&recent) })
    }

    /// `ListEpisodes`: a page of the person's 25 most recent episodes, for a
    /// setting's `viewer` (audited) or for a council holding a flag (since
    /// its plan began).
    pub async fn list_episodes(
        &self,
        caller: &Caller,
        viewer: Option<&Viewer>,
        req: &pb::ListEpisodesRequest,
        deadline: CallerDeadline,
    ) -> Result<pb::ListEpisodesResponse, ApiError> {
        let setting_viewer = match (caller, viewer) {
            (Caller::Setting(_), Some(viewer)) => Some(viewer),
            (Caller::Setting(_), None) => {
                return Err(ApiError::Unauthenticated("no verified user on this request".into()))
            }
            _ => None,
        };
        let mut v = Violations::new();
        let nhs_number = v.nhs_number("nhs_number", &req.nhs_number);
        let size = v.page_size("page_size", req.page_size, 25, 100);
        let after = page_token(&mut v, &req.page_token);
        v.finish()?;
        let nhs_number = nhs_number.ok_or_else(|| ApiError::internal("validated NHS number"))?;

        let recent = match (caller, setting_viewer) {
            (Caller::Setting(setting), Some(viewer)) => {
                self.episodes_for_setting(setting, &nhs_number, viewer, deadline).await?
            }
            (Caller::Council(council), _) => self.episodes_for_council(council, &nhs_number, deadline).await?,
            (other, _) => return Err(admitted::not_admitted(other)),
        };
        // Paged within the 25 most recent.
        let rows: Vec<_> = recent
            .iter()
            .map(|e| (convert::episode(e), Cursor::new(e.arrived_at, e.episode_id)))
            .filter(|(_, c)| after.is_none_or(|cursor| (c.at, c.id) < (cursor.at, cursor.id)))
            .take(size as usize + 1)
            .collect();
        let (episodes, next_page_token) = paginate(rows, size);
        Ok(pb::ListEpisodesResponse { episodes, next_page_token })
    }

    /// A setting's read of a person's 25 most recent episodes (gRPC
    /// `ListEpisodes`, FHIR `AuditEvent`), audited for the councils holding
    /// the person's flags. A person with no flag in scope has no episodes to
    /// show (so existence does not leak) and leaves no trace.
    pub async fn episodes_for_setting(
        &self,
        setting_code: &str,
        nhs_number: &NhsNumber,
        viewer: &Viewer,
        deadline: CallerDeadline,
    ) -> Result<Vec<Episode>, ApiError> {
        let Some(db) = episode_read(&self.pool, &self.flags, setting_code, nhs_number, viewer, deadline).await? else {
            return Ok(Vec::new());
        };
        store::list_episodes(&db, nhs_number.as_str(), None, rules::PREVIOUS_EPISODES as i64).await
    }

    /// A council's read of a person's 25 most recent episodes since its own
    /// plan began: refused unless the council holds a flag in scope now.
    async fn episodes_for_council(
        &self,
        council_code: &str,
        nhs_number: &NhsNumber,
        deadline: CallerDeadline,
    ) -> Result<Vec<Episode>, ApiError> {
        let found = self.flags.lookup(nhs_number, None, deadline).await?;
        let starts = found.flags.iter().filter(|f| f.council_code == council_code);
        let Some(start) = starts.filter_map(|f| cpis_domain::validate::parse_date(&f.start_date)).min() else {
            return Err(ApiError::PermissionDenied(
                "the calling council holds no flag in scope for this person".into(),
            ));
        };
        let since = cpis_domain::time::london_start_of_day(start);
        let db = self.pool.get().await?;
        store::list_episodes(&db, nhs_number.as_str(), Some(since), rules::PREVIOUS_EPISODES as i64).await
    }

    /// `ListAccesses`: a page of the accesses to flags `council_code` held at
    /// the time, optionally of one person, most recent first.
    pub async fn list_accesses(
        &self,
        council_code: &str,
        req: &pb::ListAccessesRequest,
    ) -> Result<pb::ListAccessesResponse, ApiError> {
        let mut v = Violations::new();
        let nhs_number: Option<NhsNumber> =
            if req.nhs_number.is_empty() { None } else { v.nhs_number("nhs_number", &req.nhs_number) };
        let size = v.page_size("page_size", req.page_size, 100, 1000);
        let after = page_token(&mut v, &req.page_token);
        v.finish()?;

        let db = self.pool.get().await?;
        let nhs_number = nhs_number.as_ref().map(NhsNumber::as_str);
        let rows = store::list_accesses(&db, council_code, nhs_number, after.as_ref(), size + 1).await?;
        let rows = rows.iter().map(|a| (convert::access(a), Cursor::new(a.accessed_at, a.access_id))).collect();
        let (accesses, next_page_token) = paginate(rows, size);
        Ok(pb::ListAccessesResponse { accesses, next_page_token })
    }
}

/// Reads an optional page token, recording a violation when it is not ours.
fn page_token(v: &mut Violations, token: &str) -> Option<Cursor> {
    if token.is_empty() {
        return None;
    }
    let cursor = Cursor::decode(token);
    if cursor.is_none() {
        v.add("page_token", "is not a token from a previous page");
    }
    cursor
}
