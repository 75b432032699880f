//! The Attendance service's settings: one struct, read from the command line
//! and the environment (`cpis serve attendance`), and the configuration the
//! service runs on. Listed in the README's settings table.

use clap::Args;
use cpis_runtime::settings::{days, hours, invalid, millis, minutes};
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the Attendance service.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// The Registry's URL (LookupFlags).
    #[arg(long, env = "CPIS_REGISTRY_URL", default_value = "https://registry:50051")]
    pub registry_url: String,
    /// The Notification service's URL (PublishAlert).
    #[arg(long, env = "CPIS_NOTIFICATION_URL", default_value = "https://notification:50053")]
    pub notification_url: String,
    /// Serve the FHIR R4 API (base path /FHIR/R4) on this address with the
    /// same mutual TLS; not served when unset.
    #[arg(long, env = "CPIS_FHIR_LISTEN")]
    pub fhir_listen: Option<SocketAddr>,
    /// The FHIR API's public base URL, as clients reach it (behind a
    /// gateway), e.g. `https://api.example.nhs.uk/cpis/FHIR/R4`: the base of
    /// every `fullUrl`, `self` link and extension URL. Default: the address
    /// served, as the request's `Host` names it (`https://<host>/FHIR/R4`).
    #[arg(long = "fhir-base-url", env = "CPIS_FHIR_BASE_URL")]
    pub fhir_base_url: Option<String>,
    /// This many episodes of a person within the repeat window (the new one
    /// included) make its alerts `ALERT_PRIORITY_REPEAT_ATTENDANCE`.
    #[arg(long, env = "CPIS_REPEAT_THRESHOLD", default_value_t = 3)]
    pub repeat_threshold: u32,
    /// The window counted for repeat attendances, in days.
    #[arg(long = "repeat-window-days", env = "CPIS_REPEAT_WINDOW_DAYS", default_value = "30", value_parser = days)]
    pub repeat_window: Duration,
    /// Check-ins of one person at one setting closer than this many hours
    /// are one episode.
    #[arg(long = "same-episode-hours", env = "CPIS_SAME_EPISODE_HOURS", default_value = "24", value_parser = hours)]
    pub same_episode_window: Duration,
    /// Longest wait for the Registry's `LookupFlags`, in milliseconds
    /// (shortened further to the caller's own deadline).
    #[arg(long = "registry-timeout-ms", env = "CPIS_REGISTRY_TIMEOUT_MS", default_value = "2000", value_parser = millis)]
    pub registry_timeout: Duration,
    /// Deadline of one publish call by the outbox relay, in milliseconds.
    #[arg(long = "publish-timeout-ms", env = "CPIS_PUBLISH_TIMEOUT_MS", default_value = "5000", value_parser = millis)]
    pub publish_timeout: Duration,
    /// Outbox rows of one council the relay reads at a time and publishes
    /// together (one `PublishAlerts` call per 500 at most).
    #[arg(long = "relay-batch", env = "CPIS_RELAY_BATCH", default_value_t = 100)]
    pub relay_batch_size: i64,
    /// Delay before the first retry of a council whose alert was not
    /// delivered, in milliseconds; doubles per failure.
    #[arg(long = "relay-retry-initial-ms", env = "CPIS_RELAY_RETRY_INITIAL_MS", default_value = "200", value_parser = millis)]
    pub retry_initial: Duration,
    /// Longest delay between retries of a council, in milliseconds.
    #[arg(long = "relay-retry-max-ms", env = "CPIS_RELAY_RETRY_MAX_MS", default_value = "30000", value_parser = millis)]
    pub retry_max: Duration,
    /// Longest sleep of the relay between passes when nothing wakes it
    /// (other replicas' check-ins, retries), in milliseconds.
    #[arg(long = "relay-poll-ms", env = "CPIS_RELAY_POLL_MS", default_value = "1000", value_parser = millis)]
    pub relay_poll_interval: Duration,
    /// How long a council stays with a relay that stopped renewing its lease
    /// (after which another replica takes it over), in milliseconds; at least
    /// the publish deadline plus a second.
    #[arg(long = "relay-lease-ms", env = "CPIS_RELAY_LEASE_MS", default_value = "15000", value_parser = millis)]
    pub relay_lease: Duration,
    /// When an arrival may have happened, relative to now.
    #[command(flatten)]
    pub arrival_window: ArrivalWindow,
    /// How the people behind setting-facing calls are verified (CIS2 tokens).
    #[command(flatten)]
    pub users: cpis_runtime::users::UserAuthSettings,
}

/// When an arrival may have happened, relative to now: check-ins are
/// reported as they happen, so an arrival days in the past is a mistake or
/// misuse (it would raise alerts for plans long out of scope), and one in
/// the future is at most clock skew at the setting.
#[derive(Args, Debug, Clone, Copy)]
pub struct ArrivalWindow {
    /// How far back an arrival may be reported, in hours.
    #[arg(long = "arrival-max-age-hours", env = "CPIS_ARRIVAL_MAX_AGE_HOURS", default_value = "72", value_parser = delta(hours))]
    pub past: chrono::TimeDelta,
    /// How far ahead an arrival may be (clock skew), in minutes.
    #[arg(long = "arrival-max-ahead-minutes", env = "CPIS_ARRIVAL_MAX_AHEAD_MINUTES", default_value = "5", value_parser = delta(minutes))]
    pub future: chrono::TimeDelta,
}

fn delta(
    parse: fn(&str) -> Result<Duration, String>,
) -> impl Fn(&str) -> Result<chrono::TimeDelta, String> + Clone + Send + Sync + 'static {
    move |s| chrono::TimeDelta::from_std(parse(s)?).map_err(|_| format!("{s:?} is too long"))
}

impl Default for ArrivalWindow {
    fn default() -> Self {
        cpis_runtime::settings::defaults()
    }
}

impl Default for Settings {
    fn default() -> Self {
        cpis_runtime::settings::defaults()
    }
}

impl Settings {
    /// Checks the rules between values, naming the variable that breaks one.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("CPIS_REPEAT_WINDOW_DAYS", self.repeat_window),
            ("CPIS_SAME_EPISODE_HOURS", self.same_episode_window),
            ("CPIS_REGISTRY_TIMEOUT_MS", self.registry_timeout),
            ("CPIS_PUBLISH_TIMEOUT_MS", self.publish_timeout),
            ("CPIS_RELAY_RETRY_INITIAL_MS", self.retry_initial),
            ("CPIS_RELAY_POLL_MS", self.relay_poll_interval),
        ];
        for (variable, value) in positive {
            if value.is_zero() {
                return Err(invalid(variable, "must be more than 0"));
            }
        }
        if self.repeat_threshold < 2 {
            return Err(invalid("CPIS_REPEAT_THRESHOLD", "must be at least 2 (one episode is not a repeat)"));
        }
        if !(1..=1_000).contains(&self.relay_batch_size) {
            return Err(invalid("CPIS_RELAY_BATCH", "must be between 1 and 1000"));
        }
        if self.retry_max < self.retry_initial {
            return Err(invalid("CPIS_RELAY_RETRY_MAX_MS", "must be at least CPIS_RELAY_RETRY_INITIAL_MS"));
        }
        for (variable, url) in
            [("CPIS_REGISTRY_URL", &self.registry_url), ("CPIS_NOTIFICATION_URL", &self.notification_url)]
        {
            if !url.starts_with("https://") {
                return Err(invalid(variable, "must be an https:// URL (the services speak mutual TLS)"));
            }
        }
        if let Some(base) = &self.fhir_base_url {
            crate::fhir::check_base_url(base).map_err(|why| invalid("CPIS_FHIR_BASE_URL", &why))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let s = Settings::default();
        assert_eq!(s.repeat_threshold, 3);
        assert_eq!(s.repeat_window, Duration::from_secs(30 * 86_400));
        assert_eq!(s.same_episode_window, Duration::from_secs(24 * 3_600));
        assert_eq!(s.registry_timeout, Duration::from_secs(2));
        assert_eq!(s.arrival_window.past, chrono::TimeDelta::hours(72));
        assert_eq!(s.arrival_window.future, chrono::TimeDelta::minutes(5));
        s.validate().expect("defaults are valid");
    }

    #[test]
    fn a_broken_rule_names_its_variable() {
        let s = Settings { retry_max: Duration::from_millis(10), ..Settings::default() };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.starts_with("CPIS_RELAY_RETRY_MAX_MS"), "{e}");
        for bad in ["http://api.example.nhs.uk/FHIR/R4", "https://", "https://api.example/FHIR?x=1", "not a url"] {
            let s = Settings { fhir_base_url: Some(bad.into()), ..Settings::default() };
            let e = s.validate().unwrap_err().to_string();
            assert!(e.starts_with("CPIS_FHIR_BASE_URL"), "{bad}: {e}");
        }
        let good =
            Settings { fhir_base_url: Some("https://api.example.nhs.uk/cpis/FHIR/R4/".into()), ..Settings::default() };
        good.validate().expect("an https base with a path");
    }
}
