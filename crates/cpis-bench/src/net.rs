//! How the benchmark reaches the services: mTLS channels per identity, the
//! setting identities of the load connections, the registered people handed
//! out for flagged check-ins, one CheckIn, and the closed-loop operations.

use super::load::Op;
use super::MAX_CONNECTIONS;
use cpis_devkit::pki::Pki;
use cpis_devkit::users::TokenSpec;
use cpis_domain::identity::{Caller, CallerKind};
use cpis_proto::attendance::v1::{
    attendance_service_client::AttendanceServiceClient, CheckInRequest, CheckInResponse, SilentReadRequest,
    SilentReadResponse,
};
use cpis_proto::common::v1::SettingType;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// Channels to the services, one per (port, identity), made on first use.
pub struct Net {
    pub pki: Pki,
    pub trust_domain: String,
    pub cache: Mutex<HashMap<String, Channel>>,
    /// Per setting code: the person there (their token's metadata), made once.
    pub people: Mutex<HashMap<String, Arc<User>>>,
}

/// The metadata of the person at a setting: a development token (B0107 and
/// B0170) from the identity provider beside the PKI.
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
    pub fn setting(&self, port: u16, slot: usize, round: usize) -> anyhow::Result<SettingChannel> {
        self.setting_code(port, &setting_code(slot, round)?)
    }

    /// The shared channel of the setting with ODS code `code`.
    pub fn setting_code(&self, port: u16, code: &str) -> anyhow::Result<SettingChannel> {
        let caller = Caller::from_parts(CallerKind::Setting, code)?;
        Ok(SettingChannel { channel: self.channel(port, &caller)?, code: code.to_string(), user: self.user(code)? })
    }

    /// The channels of the benchmark under `pki`.
    pub fn new(pki: Pki, trust_domain: String) -> Net {
        Net { pki, trust_domain, cache: Mutex::new(HashMap::new()), people: Mutex::new(HashMap::new()) }
    }

    /// The person at the setting `code`, made on first use.
    fn user(&self, code: &str) -> anyhow::Result<Arc<User>> {
        let mut people = self.people.lock().map_err(|_| anyhow::anyhow!("user cache poisoned"))?;
        if let Some(user) = people.get(code) {
            return Ok(user.clone());
        }
        let spec = TokenSpec { ttl: Duration::from_secs(24 * 3600), ..TokenSpec::new(code, &["B0107", "B0170"]) };
        let token = super::procs::users_of(&self.pki).token(&spec)?;
        let user =
            Arc::new(User { authorization: format!("Bearer {}", token.token).parse()?, urid: token.role_id.parse()? });
        people.insert(code.to_string(), user.clone());
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
fn setting_code(slot: usize, round: usize) -> anyhow::Result<String> {
    anyhow::ensure!(slot < 100 && round < 100, "setting slot {slot} round {round} out of range");
    Ok(format!("B{slot:02}R{round:02}"))
}

/// A setting's connection to the Attendance service: the channel that
/// presents its certificate, and its ODS code (whose user the request is
/// made for).
#[derive(Clone)]
pub struct SettingChannel {
    /// The mutual-TLS channel of the setting's identity.
    pub channel: Channel,
    /// The setting's ODS code.
    pub code: String,
    /// The person at the setting.
    pub user: Arc<User>,
}

/// Every Attendance request the benchmark sends is made here: the 10 s
/// deadline and the metadata of the person who asks, the user's bearer
/// token (`authorization`) and selected role (`nhsd-session-urid`), for
/// every `CheckIn` and `SilentRead` of every phase.
pub fn attendance_request<T>(setting: &SettingChannel, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(10));
    request.metadata_mut().insert("authorization", setting.user.authorization.clone());
    request.metadata_mut().insert("nhsd-session-urid", setting.user.urid.clone());
    request
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

/// One CheckIn at an emergency department with a fresh request id and
/// arrival now.
pub async fn check_in(setting: SettingChannel, nhs_number: String) -> Result<CheckInResponse, String> {
    check_in_as(setting, nhs_number, SettingType::EmergencyDepartment).await
}

/// One CheckIn at a setting of `kind` with a fresh request id and arrival now.
pub async fn check_in_as(
    setting: SettingChannel,
    nhs_number: String,
    kind: SettingType,
) -> Result<CheckInResponse, String> {
    let request = attendance_request(
        &setting,
        CheckInRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            nhs_number,
            arrived_at: Some(cpis_domain::time::to_timestamp(chrono::Utc::now())),
            setting_type: kind as i32,
            ..Default::default()
        },
    );
    let mut client = AttendanceServiceClient::new(setting.channel);
    client
        .check_in(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{} ({})", status_text(&s), setting.code))
}

/// One SilentRead from a scheduled-care setting of `kind`.
pub async fn silent_read(
    setting: SettingChannel,
    nhs_number: String,
    kind: SettingType,
) -> Result<SilentReadResponse, String> {
    let request = attendance_request(
        &setting,
        SilentReadRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            nhs_number,
            setting_type: kind as i32,
            ..Default::default()
        },
    );
    let mut client = AttendanceServiceClient::new(setting.channel);
    client
        .silent_read(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{} ({})", status_text(&s), setting.code))
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
            let channel = net.setting(port, w % slots, 0).map_err(|e| e.to_string())?.channel;
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
            let r = check_in(channel, nhs).await?;
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
            let r = check_in(channel, nhs).await?;
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
