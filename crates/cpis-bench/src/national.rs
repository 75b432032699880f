//! (12) a national day, as data: a synthetic day of England built from
//! published figures (BENCHMARKS.md cites them). The register (250,000
//! plans across the 153 councils, skewed as real councils are), the
//! settings (1,200 unscheduled, and scheduled-care ones for silent reads),
//! and the day's events in time order: the under-19 unscheduled attendances
//! on the daily curve (each a CheckIn, the flagged share registered), the
//! silent reads of office hours, and each council's nightly full upload in
//! the 01:00-03:00 window. Plain functions, the same day for every replay.

use super::data;
use cpis_proto::common::v1::SettingType;
use cpis_proto::registry::v1::Plan;

/// Plans registered nationally: the upper end of the 200,000-250,000 records
/// in scope (49,420 protection plans and 83,630 looked-after children on the
/// day, plus 12 months of ended plans).
pub const NATIONAL_PLANS: usize = 250_000;
/// Unscheduled care settings in England (more than 1,200).
pub const NATIONAL_SETTINGS: usize = 1_200;
/// Emergency department attendances a year (about 18 million).
pub const ED_ATTENDANCES_PER_YEAR: f64 = 18.0e6;
/// Unscheduled attendances of all ages a year (DOMAIN.md: about 25 million).
pub const UNSCHEDULED_ATTENDANCES_PER_YEAR: f64 = 25.0e6;
/// The share of attendances by people under 19 (about 21%).
pub const UNDER_19_SHARE: f64 = 0.21;
/// People aged 0-18 in England (ONS mid-year estimate, about 12.6 million):
/// the population the under-19 attendances come from.
pub const POPULATION_0_TO_18: f64 = 12.6e6;
/// Silent reads per under-19 unscheduled attendance: an assumption (no
/// published figure for scheduled-care views of the flag).
pub const SILENT_READS_PER_ATTENDANCE: f64 = 0.2;
/// Plans started, and plans ended, per plan per day: about 260 of each a
/// day nationally (protection plans: 111,720 in force in the year less the
/// 49,420 open at its end; looked-after: about 33,000 a year).
pub const DAILY_CHURN: f64 = 0.001;

/// Share of each hour of the day in the day's unscheduled attendances
/// (percent): a quiet night, rising through the morning, a peak in the late
/// afternoon and early evening.
const ATTENDANCE_BY_HOUR: [f64; 24] = [
    2.0, 1.4, 1.0, 0.8, 0.7, 0.7, 1.0, 1.8, 3.2, 4.4, 5.0, 5.1, 5.0, 5.0, 5.2, 5.7, 6.5, 7.0, 7.2, 7.0, 6.0, 4.6, 3.4,
    2.4,
];
/// Share of each hour in the day's silent reads (percent): scheduled care
/// works office hours.
const SILENT_READS_BY_HOUR: [f64; 24] = [
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 11.0, 12.0, 12.0, 8.0, 10.0, 12.0, 12.0, 10.0, 7.0, 0.0, 0.0, 0.0,
    0.0, 0.0, 0.0,
];

/// The councils that hold the most plans, largest first (the rest follow
/// in a fixed shuffled order).
const LARGEST_COUNCILS: [&str; 10] = [
    "E10000016",
    "E08000025",
    "E10000012",
    "E10000017",
    "E10000014",
    "E10000030",
    "E10000015",
    "E10000020",
    "E10000028",
    "E10000008",
];
/// The councils that hold the fewest, smallest last.
const SMALLEST_COUNCILS: [&str; 2] = ["E06000017", "E09000001"];

/// Where the nightly uploads fall: they start through 01:00-02:00, one
/// council after another, and each must have applied by 03:00.
pub const UPLOAD_WINDOW: (f64, f64) = (3_600.0, 10_800.0);

/// The size of the synthetic day: national (`volume` 1) or a fraction of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DaySpec {
    /// Share of the national volume (1 for the measured run, 0.1 for `--quick`).
    pub volume: f64,
    /// Plans registered.
    pub plans: usize,
    /// Plans of the largest council.
    pub largest: usize,
    /// Plans of the smallest council.
    pub smallest: usize,
    /// Unscheduled settings (checking in).
    pub settings: usize,
    /// Of which emergency departments.
    pub emergency_departments: usize,
    /// Scheduled-care settings (silent reads).
    pub scheduled_settings: usize,
    /// Under-19 unscheduled attendances in the day.
    pub attendances: usize,
    /// Share of them at emergency departments (18 of 25 million).
    pub ed_share: f64,
    /// Share of attendances by a registered person.
    pub flagged_share: f64,
    /// Silent reads in the day.
    pub silent_reads: usize,
}

impl DaySpec {
    /// The day at `volume` times the national figures.
    pub fn new(volume: f64) -> DaySpec {
        let scaled = |n: f64, least: usize| ((n * volume).round() as usize).max(least);
        let per_day = UNSCHEDULED_ATTENDANCES_PER_YEAR * UNDER_19_SHARE / 365.0;
        DaySpec {
            volume,
            plans: scaled(NATIONAL_PLANS as f64, 1_000),
            largest: scaled(4_800.0, 20),
            smallest: scaled(200.0, 2),
            settings: scaled(NATIONAL_SETTINGS as f64, 20),
            emergency_departments: scaled(180.0, 4),
            scheduled_settings: scaled(100.0, 10),
            attendances: scaled(per_day, 100),
            ed_share: ED_ATTENDANCES_PER_YEAR / UNSCHEDULED_ATTENDANCES_PER_YEAR,
            flagged_share: NATIONAL_PLANS as f64 / POPULATION_0_TO_18,
            silent_reads: scaled(per_day * SILENT_READS_PER_ATTENDANCE, 10),
        }
    }
}

/// A setting of the day: its ODS code and kind.
#[derive(Debug, Clone)]
pub struct Setting {
    /// ODS-format site code.
    pub code: String,
    /// What kind of setting it is.
    pub kind: SettingType,
}

/// What happens at one moment of the day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// An attendance at unscheduled setting `setting` (an index into
    /// [`Day::unscheduled`]); `flagged` when the person is registered.
    CheckIn { setting: usize, flagged: bool },
    /// A view from scheduled-care setting `setting` ([`Day::scheduled`]).
    SilentRead { setting: usize, flagged: bool },
    /// Council `council`'s nightly full upload starts.
    Upload { council: usize },
}

/// One event and its second of the day (0 to 86,400).
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Seconds since midnight.
    pub at: f64,
    /// What happens.
    pub event: Event,
}

/// The synthetic day: who is registered where, the settings, the events.
#[derive(Debug)]
pub struct Day {
    /// Its size.
    pub spec: DaySpec,
    /// GSS codes of the councils (the order of `data::councils`).
    pub councils: Vec<String>,
    /// Plans of each council, same order.
    pub sizes: Vec<usize>,
    /// Settings that check people in.
    pub unscheduled: Vec<Setting>,
    /// Settings that read silently.
    pub scheduled: Vec<Setting>,
    /// Everything that happens, in time order.
    pub events: Vec<Timed>,
}

/// A small deterministic generator (splitmix64): the same day every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// A second of the day drawn from hourly shares.
    fn second_of_day(&mut self, by_hour: &[f64; 24]) -> f64 {
        let total: f64 = by_hour.iter().sum();
        let mut pick = self.unit() * total;
        for (hour, &w) in by_hour.iter().enumerate() {
            if pick < w {
                return (hour as f64 + pick / w) * 3_600.0;
            }
            pick -= w;
        }
        86_399.0
    }
}

/// Council sizes from largest to smallest, summing to `total`: a smooth
/// fall from `largest` to `smallest` in log scale, `exp(ln L + (ln S - ln L)
/// * (r / (n - 1))^p)`, with `p` chosen so that the sizes add up.
pub fn council_sizes(total: usize, n: usize, largest: usize, smallest: usize) -> Vec<usize> {
    let sizes = |p: f64| -> Vec<usize> {
        let (l, s) = ((largest as f64).ln(), (smallest as f64).ln());
        (0..n)
            .map(|r| {
                let x = if n > 1 { r as f64 / (n - 1) as f64 } else { 0.0 };
                (l + (s - l) * x.powf(p)).exp().round() as usize
            })
            .collect()
    };
    let (mut lo, mut hi) = (0.01_f64, 100.0_f64);
    for _ in 0..100 {
        let mid = (lo * hi).sqrt();
        if sizes(mid).iter().sum::<usize>() < total {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut out = sizes(hi);
    // Rounding: the difference goes to the largest council.
    let sum: usize = out.iter().sum();
    if let Some(first) = out.first_mut() {
        *first = (*first + total).saturating_sub(sum).max(1);
    }
    out
}

/// The order councils take the sizes in: the largest known first, the
/// smallest last, the rest in a fixed shuffled order.
fn size_order(councils: &[String]) -> Vec<usize> {
    let mut rest: Vec<usize> = (0..councils.len())
        .filter(|&i| {
            !LARGEST_COUNCILS.contains(&councils[i].as_str()) && !SMALLEST_COUNCILS.contains(&councils[i].as_str())
        })
        .collect();
    let mut random = Random(0x0C0F_FEE5);
    for i in (1..rest.len()).rev() {
        rest.swap(i, random.below(i + 1));
    }
    let position = |code: &str| councils.iter().position(|c| c == code);
    let first = LARGEST_COUNCILS.iter().filter_map(|c| position(c));
    let last = SMALLEST_COUNCILS.iter().filter_map(|c| position(c));
    first.chain(rest).chain(last).collect()
}

impl Day {
    /// Builds the day of `spec` for `councils` (`data::councils()`).
    pub fn new(spec: DaySpec, councils: Vec<String>) -> Day {
        let by_rank = council_sizes(spec.plans, councils.len(), spec.largest, spec.smallest);
        let mut sizes = vec![0; councils.len()];
        for (rank, council) in size_order(&councils).into_iter().enumerate() {
            sizes[council] = by_rank[rank];
        }
        let others = [
            SettingType::UrgentTreatmentCentre,
            SettingType::MinorInjuryUnit,
            SettingType::OutOfHoursGp,
            SettingType::WalkInCentre,
        ];
        let unscheduled = (0..spec.settings)
            .map(|i| Setting {
                code: format!("N{i:05}"),
                kind: if i < spec.emergency_departments { SettingType::EmergencyDepartment } else { others[i % 4] },
            })
            .collect();
        let kinds = [
            SettingType::GpPractice,
            SettingType::CommunityServices,
            SettingType::Camhs,
            SettingType::ZeroToNineteenServices,
            SettingType::Dentistry,
            SettingType::SexualHealth,
            SettingType::SexualAssaultReferralCentre,
        ];
        let scheduled =
            (0..spec.scheduled_settings).map(|i| Setting { code: format!("P{i:05}"), kind: kinds[i % 7] }).collect();
        let mut random = Random(0x0DA7_2025);
        let mut events = Vec::with_capacity(spec.attendances + spec.silent_reads + councils.len());
        let eds = spec.emergency_departments.clamp(1, spec.settings);
        for _ in 0..spec.attendances {
            let at = random.second_of_day(&ATTENDANCE_BY_HOUR);
            let setting = if random.unit() < spec.ed_share || eds == spec.settings {
                random.below(eds)
            } else {
                eds + random.below(spec.settings - eds)
            };
            let flagged = random.unit() < spec.flagged_share;
            events.push(Timed { at, event: Event::CheckIn { setting, flagged } });
        }
        for _ in 0..spec.silent_reads {
            let at = random.second_of_day(&SILENT_READS_BY_HOUR);
            let setting = random.below(spec.scheduled_settings);
            let flagged = random.unit() < spec.flagged_share;
            events.push(Timed { at, event: Event::SilentRead { setting, flagged } });
        }
        let n = councils.len().max(1) as f64;
        for council in 0..councils.len() {
            let at = UPLOAD_WINDOW.0 + 3_600.0 * council as f64 / n;
            events.push(Timed { at, event: Event::Upload { council } });
        }
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        Day { spec, councils, sizes, unscheduled, scheduled, events }
    }

    /// The first register index of each council's plans (prefix sums of `sizes`).
    pub fn offsets(&self) -> Vec<usize> {
        self.sizes.iter().scan(0, |at, &n| Some(std::mem::replace(at, *at + n))).collect()
    }

    /// Check-ins of the day, and how many of them are flagged.
    pub fn check_ins(&self) -> (usize, usize) {
        let flagged = |e: &&Timed| matches!(e.event, Event::CheckIn { flagged: true, .. });
        let all = self.events.iter().filter(|e| matches!(e.event, Event::CheckIn { .. })).count();
        (all, self.events.iter().filter(flagged).count())
    }
}

/// The NHS numbers of the day (999 range): the registered, one per plan in
/// council order; those who never are; and the reserve new plans draw on.
#[derive(Debug)]
pub struct DayPeople {
    /// Person `j` holds register plan `j`.
    pub registered: Vec<String>,
    /// Never registered: the check-ins that are not flagged.
    pub unregistered: Vec<String>,
    /// New plans of the nightly uploads: council `c` uses `c * NEW_PER_COUNCIL..`.
    pub reserve: Vec<String>,
}

/// New plans a council can add over all replays of a run.
pub const NEW_PER_COUNCIL: usize = 100;

impl DayPeople {
    /// The numbers for `day`.
    pub fn new(day: &Day) -> anyhow::Result<DayPeople> {
        let mut valid = (0..1_000_000u32).filter_map(data::nhs_number);
        let mut take = |n: usize| -> Vec<String> { valid.by_ref().take(n).collect() };
        let registered = take(day.spec.plans);
        let unregistered = take(20_000);
        let reserve = take(day.councils.len() * NEW_PER_COUNCIL);
        anyhow::ensure!(reserve.len() == day.councils.len() * NEW_PER_COUNCIL, "the 999 range is too small");
        Ok(DayPeople { registered, unregistered, reserve })
    }
}

/// Council `council`'s full list on night `night` (0: the first upload):
/// its plans, the first `night * churn` of them ended yesterday and as many
/// new ones added, as the council's case system would send it.
pub fn council_list(day: &Day, people: &DayPeople, council: usize, night: usize) -> anyhow::Result<Vec<Plan>> {
    let start = day.offsets()[council];
    let size = day.sizes[council];
    let churn = (size as f64 * DAILY_CHURN).ceil() as usize * night;
    anyhow::ensure!(churn <= NEW_PER_COUNCIL, "more nights than the reserve of new plans allows");
    let yesterday = (chrono::Utc::now().date_naive() - chrono::Days::new(1)).to_string();
    let mut plans = Vec::with_capacity(size + churn);
    for j in start..start + size {
        let mut p = data::plan(format!("ND-{j:07}"), people.registered[j].clone(), j);
        if j - start < churn {
            p.end_date = yesterday.clone();
        }
        plans.push(p);
    }
    for k in 0..churn {
        let nhs = people.reserve[council * NEW_PER_COUNCIL + k].clone();
        plans.push(data::plan(format!("ND-NEW-{k:03}"), nhs, k));
    }
    Ok(plans)
}

/// The order flagged people are taken in: register index `k * stride mod
/// n`, which visits every council in proportion to its size.
pub fn flagged_order(n: usize) -> Vec<usize> {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let stride = (7_919..).find(|&s| gcd(s, n.max(1)) == 1).unwrap_or(1);
    (0..n).map(|k| k * stride % n.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_add_up_and_fall_from_a_few_thousand_to_a_couple_of_hundred() {
        let s = council_sizes(250_000, 153, 4_800, 200);
        assert_eq!(s.iter().sum::<usize>(), 250_000);
        assert!((4_700..=4_900).contains(&s[0]), "{}", s[0]);
        assert_eq!(*s.last().unwrap_or(&0), 200);
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn the_national_day_has_its_published_shape() {
        let day = Day::new(DaySpec::new(1.0), data::councils());
        assert_eq!(day.sizes.iter().sum::<usize>(), 250_000);
        let kent = day.councils.iter().position(|c| c == "E10000016").expect("Kent");
        assert_eq!(Some(&day.sizes[kent]), day.sizes.iter().max());
        let (all, flagged) = day.check_ins();
        assert_eq!(all, 14_384);
        assert!((200..380).contains(&flagged), "{flagged}");
        let night =
            day.events.iter().filter(|e| e.at < 5.0 * 3600.0 && matches!(e.event, Event::CheckIn { .. })).count();
        let evening = day
            .events
            .iter()
            .filter(|e| (17.0 * 3600.0..22.0 * 3600.0).contains(&e.at) && matches!(e.event, Event::CheckIn { .. }))
            .count();
        assert!(evening > 4 * night, "night {night} evening {evening}");
        let uploads: Vec<f64> =
            day.events.iter().filter(|e| matches!(e.event, Event::Upload { .. })).map(|e| e.at).collect();
        assert_eq!(uploads.len(), 153);
        assert!(uploads.iter().all(|&t| (UPLOAD_WINDOW.0..UPLOAD_WINDOW.0 + 3_600.0).contains(&t)));
        assert!(day.events.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn lists_grow_and_end_by_the_daily_churn_and_flagged_people_cover_the_register() {
        let day = Day::new(DaySpec::new(0.1), data::councils());
        let people = DayPeople::new(&day).expect("people");
        let first = council_list(&day, &people, 0, 0).expect("night 0");
        let third = council_list(&day, &people, 0, 2).expect("night 2");
        assert_eq!(first.len(), day.sizes[0]);
        let churn = third.len() - first.len();
        assert!(churn >= 2);
        assert_eq!(third.iter().filter(|p| !p.end_date.is_empty()).count(), churn);
        let mut order = flagged_order(day.spec.plans);
        order.sort_unstable();
        order.dedup();
        assert_eq!(order.len(), day.spec.plans);
    }
}
