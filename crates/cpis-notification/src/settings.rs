//! The Notification service's settings: one struct, read from the command
//! line and the environment (`cpis serve notification`), and the
//! configuration the service runs on. Listed in the README's settings table.

use clap::Args;
use cpis_runtime::settings::{invalid, millis, secs};
use std::time::Duration;

/// Settings of the Notification service.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// Heartbeat interval of idle alert streams, in seconds (fractions allowed).
    #[arg(long = "heartbeat-secs", env = "CPIS_HEARTBEAT_SECS", default_value = "15", value_parser = secs)]
    pub heartbeat: Duration,
    /// Alerts buffered per subscription before the stream stops reading the
    /// table and waits for the client.
    #[arg(long, env = "CPIS_STREAM_BUFFER", default_value_t = 64)]
    pub stream_buffer: usize,
    /// How often the latest sequence of every council with a stream on this
    /// instance is re-read, in one query for all of them (the safety net
    /// under LISTEN/NOTIFY), in milliseconds.
    #[arg(long = "stream-poll-ms", env = "CPIS_STREAM_POLL_MS", default_value = "5000", value_parser = millis)]
    pub poll_interval: Duration,
    /// Longest wait between attempts to re-establish the LISTEN connection,
    /// in milliseconds.
    #[arg(long = "listen-reconnect-max-ms", env = "CPIS_LISTEN_RECONNECT_MAX_MS", default_value = "5000", value_parser = millis)]
    pub reconnect_backoff_max: Duration,
    /// How often the per-council backlog metrics are re-read, in seconds.
    #[arg(long = "council-metrics-secs", env = "CPIS_COUNCIL_METRICS_SECS", default_value = "5", value_parser = secs)]
    pub council_metrics_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        cpis_runtime::settings::defaults()
    }
}

impl Settings {
    /// Checks the rules between values, naming the variable that breaks one.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.heartbeat < Duration::from_millis(50) {
            return Err(invalid("CPIS_HEARTBEAT_SECS", "must be at least 0.05"));
        }
        if self.stream_buffer == 0 {
            return Err(invalid("CPIS_STREAM_BUFFER", "must be at least 1"));
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err(invalid("CPIS_STREAM_POLL_MS", "must be at least 10"));
        }
        Ok(())
    }
}
