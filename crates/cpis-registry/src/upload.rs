//! The `SyncPlans` operation: claim the council's upload slot, stage rows
//! as they arrive (see [`crate::sync`] for the rules), and apply the snapshot
//! after a completion message stating the number of rows received, as long
//! as the caller's certificate stays valid (checked before each batch and
//! before the apply: a revoked council's upload changes nothing).

use crate::{pg, sync, today, Registry};
use cpis_proto::registry::v1 as pb;
use cpis_runtime::recheck::Identity;
use cpis_runtime::ApiError;
use tonic::Streaming;

impl Registry {
    /// Runs one `SyncPlans` upload: claims the council's single upload slot,
    /// stages rows as they arrive (a connection held only while a batch is
    /// written), and applies the snapshot only after a completion message
    /// that states the number of rows received.
    pub(crate) async fn sync(
        &self,
        council: &str,
        identity: &Identity,
        mut stream: Streaming<pb::SyncPlansRequest>,
    ) -> Result<pb::SyncPlansResponse, ApiError> {
        let cfg = &self.config;
        let mut upload = sync::Sync::new(council, today(), cfg.sync_batch);
        // An upload silent for three times the idle limit is abandoned: its
        // replica is gone (a live one is dropped after one idle limit).
        let stale_after = cfg.sync_idle * 3;
        {
            let mut client = self.council_db(council).await?;
            upload.claim(&mut client, stale_after).await?;
        }
        // Drops the rows of an upload cancelled mid-way (its client went away).
        let _staged = upload.staging_guard(self.pool.clone());
        let received = match identity.check() {
            Ok(()) => self.receive(council, identity, &mut upload, &mut stream).await,
            Err(e) => Err(e),
        };
        // The caller's certificate may have been revoked while it streamed.
        let received = received.and_then(|options| identity.check().map(|()| options));
        let (allow_mass_end, dry_run) = match received {
            Ok(options) => options,
            Err(e) => {
                // Free the council's upload slot before answering, so that
                // the client may resend at once.
                if let Ok(client) = self.pool.get().await {
                    let _ = upload.discard(pg(&client)).await;
                }
                return Err(e);
            }
        };
        let mut client = self.council_db(council).await?;
        let by = format!("council/{council}");
        let options = sync::ApplyOptions {
            by: &by,
            allow_mass_end,
            mass_end_share: cfg.mass_end_share,
            dry_run,
            unborn_scope_days: cfg.unborn_scope_days,
        };
        let outcome = upload.apply(&mut client, options).await?;
        tracing::info!(
            council = %council,
            received = outcome.received,
            created = outcome.created,
            updated = outcome.updated,
            unchanged = outcome.unchanged,
            ended = outcome.ended,
            rejected = outcome.rejected,
            conflicts = outcome.conflicted,
            dry_run,
            "plans synced"
        );
        Ok(pb::SyncPlansResponse {
            created: outcome.created,
            updated: outcome.updated,
            unchanged: outcome.unchanged,
            ended: outcome.ended,
            rejections: outcome.rejections,
            received: outcome.received,
            dry_run,
            rejected: outcome.rejected,
            created_references: outcome.created_references,
            updated_references: outcome.updated_references,
            ended_references: outcome.ended_references,
            warnings: outcome.warnings,
            conflicts: outcome.conflicts,
            conflicted: outcome.conflicted,
        })
    }

    /// Reads the upload's messages up to its completion message, staging
    /// rows as they come; returns `(allow_mass_end, dry_run)` of the first message.
    async fn receive(
        &self,
        council: &str,
        identity: &Identity,
        upload: &mut sync::Sync,
        stream: &mut Streaming<pb::SyncPlansRequest>,
    ) -> Result<(bool, bool), ApiError> {
        let cfg = &self.config;
        // Staging marks the upload alive at least this often while rows arrive.
        let keepalive = cfg.sync_idle / 4;
        let mut options = None;
        let mut stated = None;
        loop {
            let next = tokio::time::timeout(cfg.sync_idle, stream.message()).await.map_err(|_| {
                ApiError::DeadlineExceeded(format!(
                    "the upload sent nothing for {} s (CPIS_SYNC_IDLE_SECS): nothing was changed",
                    cfg.sync_idle.as_secs()
                ))
            })?;
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(council = %council, code = ?status.code(), "upload broke off: nothing applied");
                    return Err(ApiError::Aborted(format!(
                        "the upload broke off ({}): nothing was changed",
                        status.message()
                    )));
                }
            };
            if stated.is_some() {
                return Err(ApiError::invalid(
                    "completion",
                    "the completion message must be the last message of the upload: nothing was changed",
                ));
            }
            if options.is_none() {
                options = Some((msg.allow_mass_end, msg.dry_run));
            }
            if let Some(completion) = msg.completion {
                if msg.plan.is_some() {
                    return Err(ApiError::invalid(
                        "plan",
                        "the completion message carries no plan: send the last plan in its own message",
                    ));
                }
                stated = Some(completion.plan_rows);
                continue;
            }
            if upload.received() >= cfg.sync_max_rows {
                return Err(ApiError::invalid(
                    "plan",
                    format!(
                        "the upload has more than {} plan rows (CPIS_SYNC_MAX_ROWS): it was refused whole and \
                         nothing was changed",
                        cfg.sync_max_rows
                    ),
                ));
            }
            upload.push(msg.plan.as_ref());
            if upload.should_flush(keepalive) {
                identity.check()?;
                upload.settle().await?;
                let client = self.council_db(council).await?;
                upload.flush(client);
            }
        }
        let Some(stated) = stated else {
            return Err(ApiError::invalid(
                "completion",
                format!(
                    "the upload ended after {} plan rows without its completion message, so it may be incomplete: \
                     nothing was changed; send the whole list followed by a completion message stating its number \
                     of plan rows",
                    upload.received()
                ),
            ));
        };
        if stated != upload.received() {
            return Err(ApiError::invalid(
                "completion.plan_rows",
                format!("states {stated} plan rows but {} were received: nothing was changed", upload.received()),
            ));
        }
        upload.settle().await?;
        Ok(options.unwrap_or((false, false)))
    }
}
