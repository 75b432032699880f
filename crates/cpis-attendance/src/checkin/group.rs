//! Group commit of flagged check-ins: the flagged check-ins that arrive
//! while earlier ones are being written are written together, in one
//! transaction (one commit, one WAL flush, a handful of statements over
//! arrays) instead of one transaction each. A lone check-in goes at once
//! and waits for nothing; queued ones go together when a group in flight
//! returns ([`crate::coalesce`], at most [`GROUPS_IN_FLIGHT`] groups at a
//! time, so one group runs its statements while another waits for its flush).
//!
//! Nothing a check-in is promised changes:
//!
//! - **durable before answered**: every check-in of a group is answered only
//!   after the group's transaction committed (a durable commit, as before), so
//!   an answered flagged check-in's episode, access and outbox rows are on
//!   disk; a group that fails commits nothing, and each of its check-ins is
//!   then written alone ([`GroupCommit::record_alone`], the transaction a
//!   check-in always had), so one check-in's failure is never another's;
//! - **one person at one setting at a time**: the group takes the advisory
//!   lock of every person at their setting (the keys a check-in alone takes),
//!   in hash order, before reading anything;
//! - **the same rules, in arrival order**: each check-in is decided by
//!   [`rules::decide`] on the person's stored history plus the episodes the
//!   group's earlier check-ins created, i.e. exactly as if they had committed
//!   one after another in the order they were queued; a repeat of a
//!   `request_id` inside the group is answered as a replay of the first;
//! - **per-council order**: the outbox rows take their councils' position
//!   counters inside the transaction, in council-code order, held until it
//!   commits, as a check-in alone does: a position becomes visible only
//!   after every lower one of its council.

use super::{replay, ValidCheckIn};
use crate::coalesce::Coalescer;
use crate::convert;
use crate::model::{AlertTarget, Episode, FlaggedRows, StoredRequest};
use crate::rules::{self, EpisodeRules};
use crate::store::checkin as single;
use crate::store::grouped as store;
use cpis_proto::attendance::v1::CheckInResponse;
use cpis_proto::registry::v1::LookupFlagsResponse;
use cpis_runtime::db::DbPool;
use cpis_runtime::ApiError;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

/// Groups written at the same time.
pub const GROUPS_IN_FLIGHT: usize = 2;

/// How a flagged check-in was answered.
#[derive(Debug)]
pub struct Recorded {
    /// The answer.
    pub response: CheckInResponse,
    /// True when it is an earlier request's answer given again.
    pub replayed: bool,
}

type Answer = Result<Recorded, ApiError>;

/// Writes flagged check-ins, grouped.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    pool: DbPool,
    rules: EpisodeRules,
    /// Wakes the relay as soon as a group has queued alerts.
    wake_relay: Arc<Notify>,
    queue: Arc<Coalescer<Job>>,
}

/// One flagged check-in waiting to be written.
#[derive(Debug)]
struct Job {
    setting_code: String,
    valid: ValidCheckIn,
    found: LookupFlagsResponse,
    /// The check-in's trace context, for the relay.
    traceparent: Option<String>,
    answer: oneshot::Sender<Answer>,
}

/// What the group decided for one of its check-ins.
enum Outcome {
    /// Answered before (committed earlier): its first answer again.
    Earlier(StoredRequest),
    /// The same `request_id` as the group's check-in at this index.
    SameAs(usize),
    /// New: these rows are written.
    Decided(Decided),
}

/// A check-in's rows and answer, owned until the group's statement is built.
struct Decided {
    episode: Episode,
    new_episode: bool,
    alerts: Vec<AlertTarget>,
    priority: i32,
    alert_viewer: Vec<u8>,
    response: CheckInResponse,
    encoded: Vec<u8>,
}

impl GroupCommit {
    /// Writes into `pool` by `rules`, waking the relay with `wake_relay`.
    pub fn new(pool: DbPool, rules: EpisodeRules, wake_relay: Arc<Notify>) -> Self {
        Self { pool, rules, wake_relay, queue: Arc::new(Coalescer::with_parallel(GROUPS_IN_FLIGHT)) }
    }

    /// Records a flagged arrival (`found` the Registry's answer) and answers
    /// once it has committed, with the next group of check-ins.
    pub async fn record(&self, setting_code: &str, valid: ValidCheckIn, found: LookupFlagsResponse) -> Answer {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            setting_code: setting_code.to_string(),
            valid,
            found,
            traceparent: cpis_runtime::telemetry::current_traceparent(),
            answer,
        };
        if let Some(group) = self.queue.enqueue(job) {
            let this = self.clone();
            tokio::spawn(async move { this.queue.drain(group, "check-in group", |g| this.commit(g)).await });
        }
        answered.await.unwrap_or_else(|_| Err(ApiError::internal("the check-in was dropped unrecorded")))
    }

    /// Writes the group's check-ins whose callers still wait, together; if
    /// that fails, each alone.
    async fn commit(&self, mut group: Vec<Job>) {
        group.retain(|j| !j.answer.is_closed());
        if group.is_empty() {
            return;
        }
        match self.commit_group(&group).await {
            Ok((answers, queued)) => {
                if queued {
                    self.wake_relay.notify_one();
                }
                for (job, answer) in group.into_iter().zip(answers) {
                    let _ = job.answer.send(answer);
                }
            }
            Err(e) => {
                tracing::info!(check_ins = group.len(), error = %e, "a check-in group was not written; each goes alone");
                let alone = group.iter().map(|job| self.record_alone(job));
                let answers = futures::future::join_all(alone).await;
                for (job, answer) in group.into_iter().zip(answers) {
                    let _ = job.answer.send(answer);
                }
            }
        }
    }

    /// One transaction for the whole group: BEGIN; the locks, replay records
    /// and histories, pipelined; one statement writing every row; COMMIT.
    /// Answers in the group's order, and whether alerts were queued.
    async fn commit_group(&self, group: &[Job]) -> Result<(Vec<Answer>, bool), ApiError> {
        let keys: Vec<String> =
            group.iter().map(|j| store::person_at_setting_key(&j.setting_code, j.valid.nhs_number.as_str())).collect();
        let requests: Vec<(&str, &str)> =
            group.iter().map(|j| (j.setting_code.as_str(), j.valid.request_id.as_str())).collect();
        let mut since: HashMap<&str, chrono::DateTime<chrono::Utc>> = HashMap::new();
        for j in group {
            let from = self.rules.history_since(j.valid.arrived_at);
            since.entry(j.valid.nhs_number.as_str()).and_modify(|s| *s = (*s).min(from)).or_insert(from);
        }
        let people: Vec<(&str, chrono::DateTime<chrono::Utc>)> = since.into_iter().collect();
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        // Pipelined as a check-in alone: the locks first, the reads behind
        // them, each read's snapshot taken once every lock is held.
        let (_, earlier, mut histories) = futures::future::try_join3(
            store::lock_people_at_settings(&tx, &keys),
            single::find_requests(&tx, &requests),
            store::people_histories(&tx, &people, rules::PREVIOUS_EPISODES as i64 + 1),
        )
        .await?;
        let outcomes = self.decide(group, earlier, &mut histories);
        let rows: Vec<FlaggedRows<'_>> = group
            .iter()
            .zip(&outcomes)
            .filter_map(|(job, outcome)| match outcome {
                Outcome::Decided(d) => Some(grouped_rows(job, d)),
                _ => None,
            })
            .collect();
        let mut queued = false;
        if !rows.is_empty() {
            let inserted = store::insert_group(&tx, &rows).await?;
            if inserted.requests_stored < rows.len() as i64 {
                // A request id used at once by another check-in (of another
                // person): each goes alone, and the first one wins.
                tx.rollback().await?;
                return Err(ApiError::Contention("a request_id of the group was stored concurrently".into()));
            }
            queued = inserted.alerts_queued > 0;
        }
        tx.commit().await?;
        let answers = (0..group.len()).map(|i| answer(group, &outcomes, i)).collect();
        Ok((answers, queued))
    }

    /// Decides each check-in of the group in order, on its person's stored
    /// history plus the episodes the group's earlier check-ins created.
    fn decide(
        &self,
        group: &[Job],
        earlier: Vec<Option<StoredRequest>>,
        histories: &mut HashMap<String, Vec<Episode>>,
    ) -> Vec<Outcome> {
        let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        for (i, (job, earlier)) in group.iter().zip(earlier).enumerate() {
            if let Some(earlier) = earlier {
                outcomes.push(Outcome::Earlier(earlier));
                continue;
            }
            let key = (job.setting_code.as_str(), job.valid.request_id.as_str());
            if let Some(&first) = first_of.get(&key) {
                outcomes.push(Outcome::SameAs(first));
                continue;
            }
            first_of.insert(key, i);
            let v = &job.valid;
            let history = histories.entry(v.nhs_number.as_str().to_string()).or_default();
            let setting_type = v.setting_type as i32;
            let decision =
                rules::decide(history, &job.setting_code, setting_type, v.arrived_at, self.rules, Uuid::now_v7());
            if decision.new_episode {
                history.push(decision.episode.clone());
            }
            let response = convert::flagged_check_in(job.found.flags.clone(), &decision.episode, &decision.previous);
            outcomes.push(Outcome::Decided(Decided {
                encoded: response.encode_to_vec(),
                response,
                alerts: rules::alert_targets(&job.found),
                priority: decision.priority as i32,
                alert_viewer: convert::viewer(&v.viewer).encode_to_vec(),
                episode: decision.episode,
                new_episode: decision.new_episode,
            }));
        }
        outcomes
    }

    /// Records one flagged arrival in a transaction of its own, of four round
    /// trips (BEGIN; the lock, replay record and history, pipelined; one
    /// statement writing every row; COMMIT), and answers once it has committed.
    async fn record_alone(&self, job: &Job) -> Answer {
        let (setting_code, valid) = (job.setting_code.as_str(), &job.valid);
        let nhs_number = valid.nhs_number.as_str();
        let alerts = rules::alert_targets(&job.found);
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        let (_, earlier, history) = futures::future::try_join3(
            single::lock_person_at_setting(&tx, setting_code, nhs_number),
            single::find_request(&tx, setting_code, &valid.request_id),
            single::person_history(
                &tx,
                nhs_number,
                self.rules.history_since(valid.arrived_at),
                rules::PREVIOUS_EPISODES as i64 + 1,
            ),
        )
        .await?;
        if let Some(earlier) = earlier {
            tx.rollback().await?;
            return replayed(&earlier, &valid.fingerprint);
        }
        let setting_type = valid.setting_type as i32;
        let decision =
            rules::decide(&history, setting_code, setting_type, valid.arrived_at, self.rules, Uuid::now_v7());
        let response = convert::flagged_check_in(job.found.flags.clone(), &decision.episode, &decision.previous);
        let encoded = response.encode_to_vec();
        let alert_viewer = convert::viewer(&valid.viewer).encode_to_vec();
        let rows = FlaggedRows {
            episode: &decision.episode,
            new_episode: decision.new_episode,
            nhs_number,
            setting_code,
            setting_type,
            viewer: &valid.viewer,
            alert_viewer: &alert_viewer,
            alerts: &alerts,
            priority: decision.priority as i32,
            traceparent: job.traceparent.as_deref(),
            request_id: &valid.request_id,
            fingerprint: &valid.fingerprint,
            response: &encoded,
        };
        let inserted = single::insert_flagged(&tx, &rows).await?;
        if !inserted.request_stored {
            // The same request_id was used concurrently for another person
            // (the lock covers the same person): the first one wins.
            tx.rollback().await?;
            return match single::find_request(&db, setting_code, &valid.request_id).await? {
                Some(earlier) => replayed(&earlier, &valid.fingerprint),
                None => Err(ApiError::Contention(
                    "a concurrent check-in with this request_id did not complete; retry".into(),
                )),
            };
        }
        tx.commit().await?;
        if inserted.alerts_queued > 0 {
            self.wake_relay.notify_one();
        }
        Ok(Recorded { response, replayed: false })
    }
}

/// The rows of a decided check-in, borrowed from the job and the decision.
fn grouped_rows<'a>(job: &'a Job, d: &'a Decided) -> FlaggedRows<'a> {
    let v = &job.valid;
    FlaggedRows {
        episode: &d.episode,
        new_episode: d.new_episode,
        nhs_number: v.nhs_number.as_str(),
        setting_code: &job.setting_code,
        setting_type: v.setting_type as i32,
        viewer: &v.viewer,
        alert_viewer: &d.alert_viewer,
        alerts: &d.alerts,
        priority: d.priority,
        traceparent: job.traceparent.as_deref(),
        request_id: &v.request_id,
        fingerprint: &v.fingerprint,
        response: &d.encoded,
    }
}

/// The answer to the group's check-in `i`, once the group committed.
fn answer(group: &[Job], outcomes: &[Outcome], i: usize) -> Answer {
    let fingerprint = &group[i].valid.fingerprint;
    match &outcomes[i] {
        Outcome::Earlier(earlier) => replayed(earlier, fingerprint),
        Outcome::SameAs(first) => match &outcomes[*first] {
            Outcome::Decided(d) => replayed(
                &StoredRequest { fingerprint: group[*first].valid.fingerprint.clone(), response: d.encoded.clone() },
                fingerprint,
            ),
            _ => Err(ApiError::internal("a repeated request_id points at no decided check-in")),
        },
        Outcome::Decided(d) => Ok(Recorded { response: d.response.clone(), replayed: false }),
    }
}

/// [`replay`] of an earlier answer, marked as replayed.
fn replayed(earlier: &StoredRequest, fingerprint: &[u8]) -> Answer {
    replay(earlier, fingerprint).map(|response| Recorded { response, replayed: true })
}
