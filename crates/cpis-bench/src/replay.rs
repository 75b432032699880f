//! (12)'s replay: plays a list of the day's events against the running
//! replicas, compressed by a factor (the event at second `s` of the day is
//! sent `s / factor` seconds after the start, whatever the answers do: an
//! open loop), and records what each came to: check-in latencies by minute
//! of the day, silent reads, every flagged check-in's episode for its
//! alert, and when each council's nightly upload finished against the end
//! of its window.

use super::held::Held;
use super::load::micros;
use super::national::{Day, DayPeople, Event, Timed, UPLOAD_WINDOW};
use super::net::{self, Net, SettingChannel};
use super::{data, national};
use cpis_proto::registry::v1::Plan;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a replay runs against.
pub struct Rig<'a> {
    /// The day.
    pub day: &'a Day,
    /// Its people.
    pub people: &'a DayPeople,
    /// Channels.
    pub net: Arc<Net>,
    /// The Attendance replicas' ports (setting `i` uses replica `i mod n`).
    pub attendance_ports: Vec<u16>,
    /// The Registry's port.
    pub registry_port: u16,
    /// The council streams.
    pub held: &'a Held,
    /// Registered people handed out for flagged check-ins, never twice in a run.
    pub flagged: Arc<FlaggedPeople>,
}

/// Registered people in [`national::flagged_order`], each used once.
pub struct FlaggedPeople {
    order: Vec<usize>,
    next: AtomicUsize,
}

impl FlaggedPeople {
    /// Every registered person of `people`, in an order that visits every council.
    pub fn new(people: &DayPeople) -> Arc<FlaggedPeople> {
        Arc::new(FlaggedPeople { order: national::flagged_order(people.registered.len()), next: AtomicUsize::new(0) })
    }

    /// The register index of the next person.
    fn take(&self) -> usize {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.order[i % self.order.len()]
    }
}

/// One answered check-in or silent read.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Minute of the day it belongs to (0 to 1439).
    pub minute: u16,
    /// Whether the person was registered.
    pub flagged: bool,
    /// From sending to the answer, in microseconds.
    pub micros: u64,
}

/// One nightly upload.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Rows sent.
    pub rows: usize,
    /// Seconds of the day it finished at, compressed back (the window ends at 10,800).
    pub finished_at: f64,
    /// Whether it applied before its window closed.
    pub on_time: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Times it was sent again after the Registry said it was busy.
    pub retries: usize,
}

/// What one replay recorded.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The compression factor.
    pub factor: f64,
    /// Seconds from the first event's time to the last answer.
    pub seconds: f64,
    /// Answered check-ins.
    pub check_ins: Vec<Sample>,
    /// Answered silent reads.
    pub silent_reads: Vec<Sample>,
    /// Failed calls (check-ins and silent reads, any status or a wrong answer).
    pub errors: Vec<String>,
    /// Each flagged check-in's episode and when its answer came.
    pub episodes: Vec<(String, Instant)>,
    /// The nightly uploads.
    pub uploads: Vec<Upload>,
}

/// What one spawned call came to.
enum Done {
    Call { sample: Sample, silent: bool, episode: Option<(String, Instant)> },
    Failed(String),
    Uploaded(Upload),
}

/// Plays `events` at `factor`; uploads send night `night`'s lists.
pub async fn play(rig: &Rig<'_>, events: &[Timed], factor: f64, night: usize) -> anyhow::Result<Outcome> {
    // Upload lists are built first, so that building them is not load.
    let mut lists: Vec<Option<Vec<Plan>>> = vec![None; rig.day.councils.len()];
    for e in events {
        if let Event::Upload { council } = e.event {
            lists[council] = Some(national::council_list(rig.day, rig.people, council, night)?);
        }
    }
    let start = Instant::now() + Duration::from_millis(200);
    let at = |second: f64| start + Duration::from_secs_f64(second / factor);
    let upload_deadline = at(UPLOAD_WINDOW.1);
    let mut tasks = tokio::task::JoinSet::new();
    for (k, e) in events.iter().enumerate() {
        tokio::time::sleep_until(at(e.at).into()).await;
        let minute = ((e.at / 60.0) as u16).min(1439);
        match e.event {
            Event::CheckIn { setting, flagged } => {
                let s = &rig.day.unscheduled[setting];
                let port = rig.attendance_ports[setting % rig.attendance_ports.len()];
                let channel = rig.net.setting_code(port, &s.code)?;
                let nhs = person(rig, flagged, k);
                tasks.spawn(check_in(channel, nhs, s.kind, flagged, minute));
            }
            Event::SilentRead { setting, flagged } => {
                let s = &rig.day.scheduled[setting];
                let port = rig.attendance_ports[setting % rig.attendance_ports.len()];
                let channel = rig.net.setting_code(port, &s.code)?;
                let (nhs, kind) = (person(rig, flagged, k), s.kind);
                tasks.spawn(async move {
                    let t = Instant::now();
                    match net::silent_read(channel, nhs, kind).await {
                        Ok(r) if r.flagged == flagged => {
                            let sample = Sample { minute, flagged, micros: micros(t.elapsed()) };
                            Done::Call { sample, silent: true, episode: None }
                        }
                        Ok(r) => {
                            Done::Failed(format!("silent read: flagged {} where {flagged} was expected", r.flagged))
                        }
                        Err(e) => Done::Failed(format!("silent read: {e}")),
                    }
                });
            }
            Event::Upload { council } => {
                let plans = Arc::new(lists[council].take().unwrap_or_default());
                let channel = rig.net.council(rig.registry_port, &rig.day.councils[council])?;
                tasks.spawn(async move {
                    let rows = plans.len();
                    let limit = Duration::from_secs(600);
                    let mut retries = 0;
                    let sending = upload(channel, plans, upload_deadline, &mut retries);
                    let result = tokio::time::timeout(limit, sending).await;
                    let done = Instant::now();
                    let finished_at = done.saturating_duration_since(start).as_secs_f64() * factor;
                    let error = match result {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(format!("{e:#}")),
                        Err(_) => Some(format!("no answer within {limit:?}")),
                    };
                    Done::Uploaded(Upload {
                        rows,
                        finished_at,
                        on_time: error.is_none() && done <= upload_deadline,
                        error,
                        retries,
                    })
                });
            }
        }
    }
    let mut out = Outcome { factor, ..Default::default() };
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Done::Call { sample, silent: true, .. }) => out.silent_reads.push(sample),
                Ok(Done::Call { sample, episode, .. }) => {
                    out.check_ins.push(sample);
                    out.episodes.extend(episode);
                }
                Ok(Done::Failed(e)) => out.errors.push(e),
                Ok(Done::Uploaded(u)) => out.uploads.push(u),
                Err(e) => out.errors.push(format!("task: {e}")),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(660), collect).await.is_err() {
        out.errors.push("calls still unanswered 660 s after the last was sent".into());
        tasks.abort_all();
    }
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// One council's upload, sent again after a transient refusal (the
/// Registry busy with other councils) with a backoff from 50 ms to 1 s, as
/// a council's client does, until 30 s after its window closed.
async fn upload(
    channel: tonic::transport::Channel,
    plans: Arc<Vec<Plan>>,
    deadline: Instant,
    retries: &mut usize,
) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(50);
    loop {
        let rows = plans.clone();
        let sent = data::sync(channel.clone(), (0..rows.len()).map(move |i| rows[i].clone())).await;
        match sent {
            Err(e) if data::Refused::is_transient(&e) && Instant::now() < deadline + Duration::from_secs(30) => {
                *retries += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other.map(|_| ()),
        }
    }
}

/// The person of event `k`: the next registered one, or someone never registered.
fn person(rig: &Rig<'_>, flagged: bool, k: usize) -> String {
    if flagged {
        rig.people.registered[rig.flagged.take()].clone()
    } else {
        rig.people.unregistered[k % rig.people.unregistered.len()].clone()
    }
}

/// One check-in, checked against what the person's registration says.
async fn check_in(
    channel: SettingChannel,
    nhs: String,
    kind: cpis_proto::common::v1::SettingType,
    flagged: bool,
    minute: u16,
) -> Done {
    let t = Instant::now();
    let answer = net::check_in_as(channel, nhs, kind).await;
    let (took, returned) = (t.elapsed(), Instant::now());
    match answer {
        Ok(r) if r.flagged == flagged && (!flagged || !r.episode_id.is_empty()) => {
            let sample = Sample { minute, flagged, micros: micros(took) };
            let episode = flagged.then_some((r.episode_id, returned));
            Done::Call { sample, silent: false, episode }
        }
        Ok(r) => Done::Failed(format!("check-in: flagged {} where {flagged} was expected", r.flagged)),
        Err(e) => Done::Failed(format!("check-in: {e}")),
    }
}

/// Waits until every flagged check-in's alert has arrived, at most `limit`
/// after the replay; returns how many never did.
pub async fn await_alerts(held: &Held, outcome: &Outcome, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let missing = held.missing(outcome.episodes.iter().map(|(e, _)| e.as_str()));
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every setting of the day connects once (a Health/Check over its own
/// certificate), so that no replay pays for certificates and handshakes.
pub async fn connect_settings(rig: &Rig<'_>) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let all = rig.day.unscheduled.iter().enumerate().chain(rig.day.scheduled.iter().enumerate());
    let mut checks = Vec::new();
    for (i, s) in all {
        let port = rig.attendance_ports[i % rig.attendance_ports.len()];
        let channel = rig.net.setting_code(port, &s.code)?.channel;
        checks.push(async move {
            let mut client = HealthClient::new(channel);
            client.check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
        });
    }
    let results: Vec<_> = futures::stream::iter(checks).buffer_unordered(64).collect().await;
    for r in results {
        r.map_err(|s| anyhow::anyhow!("a setting could not connect: {}", net::status_text(&s)))?;
    }
    for code in &rig.day.councils {
        rig.net.council(rig.registry_port, code)?;
    }
    Ok(())
}
