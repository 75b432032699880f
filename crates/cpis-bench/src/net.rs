//! How the benchmark reaches the services: mTLS channels per identity, the
//! setting identities of the load connections, the registered people handed
//! out for flagged check-ins, one CheckIn, and the closed-loop operations.

use super::load::Op;
use super::MAX_CONNECTIONS;
use cpis_devkit::pki::Pki;
use cpis_devkit::users::{DevUsers, TokenSpec};
use cpis_domain::identity::{Caller, CallerKind};
use cpis_proto::attendance::v1::{attendance_service_client::AttendanceServiceClient, CheckInRequest, CheckInResponse};
use cpis_proto::common::v1::SettingType;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// Channels to the services, one per (port, identity), made on first use;
/// and the person at each setting, whose token every CheckIn carries.
pub struct Net {
    pub pki: Pki,
    pub trust_domain: String,
    pub cache: Mutex<HashMap<String, Channel>>,
    /// The development identity provider the Attendance service trusts.
    pub users: DevUsers,
    /// Per setting code: the `authorization` and `nhsd-session-urid` values.
    pub people: Mutex<HashMap<String, Arc<User>>>,
}

/// The metadata a setting's person sends with each call.
pub struct User {
    authorization: MetadataValue<Ascii>,
    urid: MetadataValue<Ascii>,
}

impl Net {
    /// A channel to `port` presenting `caller`'s certificate, shared by
    /// everyone asking for the same pair (one HTTP/2 connection).
    pub fn channel(&self, port: u16, caller: &Caller) -> anyhow::Result<Channel> {
        let key = format!("{port}/{}/{}", caller.kind().as_str(), caller.code());
        let mut cache = self.cache.lock().map_err(|_| anyhow::anyhow!("channel cache poisoned"))?;
        if let Some(ch) = cache.get(&key) {
            return Ok(ch.clone());
        }
        let ch = self.fresh_channel(port, caller)?;
        cache.insert(key, ch.clone());
        Ok(ch)
    }

    /// A new channel (its own connection) to `port` as `caller`.
    pub fn fresh_channel(&self, port: u16, caller: &Caller) -> anyhow::Result<Channel> {
        let tls = self.pki.ensure(caller, &self.trust_domain)?;
        cpis_runtime::client::channel(&format!("https://localhost:{port}"), &tls, None)
    }

    /// The channel of load connection `slot` in round `round` (see [`Flagged`]).
    pub fn setting(&self, port: u16, slot: usize, round: usize) -> anyhow::Result<Channel> {
        self.channel(port, &setting_caller(slot, round)?)
    }

    /// The person at the setting of load connection `slot` in round
    /// `round` (a clinician whose role allows the notifying read), made once.
    pub fn user(&self, slot: usize, round: usize) -> anyhow::Result<Arc<User>> {
        let code = setting_caller(slot, round)?.code().to_string();
        let mut people = self.people.lock().map_err(|_| anyhow::anyhow!("user cache poisoned"))?;
        if let Some(user) = people.get(&code) {
            return Ok(user.clone());
        }
        let spec = TokenSpec { ttl: Duration::from_secs(24 * 3600), ..TokenSpec::new(&code, &["B0107"]) };
        let token = self.users.token(&spec)?;
        let user =
            Arc::new(User { authorization: format!("Bearer {}", token.token).parse()?, urid: token.role_id.parse()? });
        people.insert(code, user.clone());
        Ok(user)
    }

    /// The shared channel of council `code`.
    pub fn council(&self, port: u16, code: &str) -> anyhow::Result<Channel> {
        self.channel(port, &council(code)?)
    }
}

/// The council identity with GSS code `code`.
pub fn council(code: &str) -> anyhow::Result<Caller> {
    Ok(Caller::from_parts(CallerKind::Council, code)?)
}

/// The setting identity of load connection `slot` in round `round`: an ODS
/// format code such as `B03R00`.
fn setting_caller(slot: usize, round: usize) -> anyhow::Result<Caller> {
    anyhow::ensure!(slot < 100 && round < 100, "setting slot {slot} round {round} out of range");
    Ok(Caller::from_parts(CallerKind::Setting, &format!("B{slot:02}R{round:02}"))?)
}

/// Registered people handed out for flagged check-ins. Person `i` of the
/// list is used at most once per setting: the n-th pass over the list
/// ("round") checks in at settings of round n, so every flagged check-in
/// is a new episode and publishes a new alert.
pub struct Flagged {
    people: Vec<String>,
    next: AtomicUsize,
}

impl Flagged {
    pub fn new(people: &[String]) -> Arc<Flagged> {
        Arc::new(Flagged { people: people.to_vec(), next: AtomicUsize::new(0) })
    }

    /// The next person and round.
    pub fn take(&self) -> (String, usize) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (self.people[i % self.people.len()].clone(), i / self.people.len())
    }

    /// How many have been handed out.
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

/// A status as a short text (code and message; the services never put
/// personal data in a message).
pub fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// One CheckIn by `user` with a fresh request id, a 10 s deadline and arrival now.
pub async fn check_in(channel: Channel, user: &User, nhs_number: String) -> Result<CheckInResponse, String> {
    let mut request = tonic::Request::new(CheckInRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        nhs_number,
        arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
        setting_type: SettingType::EmergencyDepartment as i32,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(10));
    // Every request's metadata is added here, and only here.
    request.metadata_mut().insert("authorization", user.authorization.clone());
    request.metadata_mut().insert("nhsd-session-urid", user.urid.clone());
    let mut client = AttendanceServiceClient::new(channel);
    client.check_in(request).await.map(|r| r.into_inner()).map_err(|s| status_text(&s))
}

/// Load connections a level of `concurrency` workers uses.
pub fn slots(concurrency: usize) -> usize {
    concurrency.clamp(1, MAX_CONNECTIONS)
}

/// (1): `grpc.health.v1.Health/Check` on `port` as a setting.
pub fn health_op(net: Arc<Net>, port: u16, slots: usize) -> Op {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    Arc::new(move |w| {
        let net = net.clone();
        Box::pin(async move {
            let channel = net.setting(port, w % slots, 0).map_err(|e| e.to_string())?;
            let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
            request.set_timeout(Duration::from_secs(10));
            let status = HealthClient::new(channel).check(request).await.map_err(|s| status_text(&s))?;
            match status.into_inner().status {
                1 => Ok(()),
                other => Err(format!("health status {other}")),
            }
        })
    })
}

/// (3): CheckIn of people never registered, cycling through `numbers`.
pub fn not_flagged_op(net: Arc<Net>, port: u16, numbers: Arc<Vec<String>>, slots: usize) -> Op {
    let next = Arc::new(AtomicUsize::new(0));
    Arc::new(move |w| {
        let (net, numbers, next) = (net.clone(), numbers.clone(), next.clone());
        Box::pin(async move {
            let nhs = numbers[next.fetch_add(1, Ordering::Relaxed) % numbers.len()].clone();
            let channel = net.setting(port, w % slots, 0).map_err(|e| e.to_string())?;
            let user = net.user(w % slots, 0).map_err(|e| e.to_string())?;
            let r = check_in(channel, &user, nhs).await?;
            if r.flagged {
                return Err("an unregistered person was flagged".into());
            }
            Ok(())
        })
    })
}

/// (4): CheckIn of registered people, each a new episode.
pub fn flagged_op(net: Arc<Net>, port: u16, people: Arc<Flagged>, slots: usize) -> Op {
    Arc::new(move |w| {
        let (net, people) = (net.clone(), people.clone());
        Box::pin(async move {
            let (nhs, round) = people.take();
            let channel = net.setting(port, w % slots, round).map_err(|e| e.to_string())?;
            let user = net.user(w % slots, round).map_err(|e| e.to_string())?;
            let r = check_in(channel, &user, nhs).await?;
            if !r.flagged || r.episode_id.is_empty() {
                return Err("a registered person was not flagged".into());
            }
            Ok(())
        })
    })
}

/// (2): one durable single-row INSERT (its own transaction). `prepared`: a
/// statement cached on the connection; otherwise the SQL text, which
/// tokio-postgres prepares as an unnamed statement on every call (one more
/// round trip, parse and plan each time).
pub fn db_op(pool: cpis_runtime::db::DbPool, prepared: bool) -> Op {
    const INSERT: &str = "INSERT INTO bench.scratch (id, nhs_number, setting_code, arrived_at) VALUES ($1, $2, $3, $4)";
    Arc::new(move |w| {
        let pool = pool.clone();
        Box::pin(async move {
            let db = pool.get().await.map_err(|e| format!("pool: {e}"))?;
            let setting = format!("B{:02}R00", w % MAX_CONNECTIONS);
            let (id, now) = (uuid::Uuid::now_v7(), chrono::Utc::now());
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&id, &"9990000018", &setting, &now];
            let done = if prepared {
                let insert = db.prepare_cached(INSERT).await.map_err(|e| cpis_runtime::db::describe(&e))?;
                db.execute(&insert, &params).await
            } else {
                db.execute(INSERT, &params).await
            };
            done.map_err(|e| cpis_runtime::db::describe(&e))?;
            Ok(())
        })
    })
}
