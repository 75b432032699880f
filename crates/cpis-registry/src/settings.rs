//! The Registry's settings: one struct, read from the command line and the
//! environment (`cpis serve registry`), and the configuration the service runs
//! on. Listed in the README's settings table.

use clap::Args;
use cpis_runtime::settings::{invalid, millis, secs};
use std::time::Duration;

/// 28 days, as the national CP-IS service keeps an unborn child protection
/// plan on show after the expected delivery date (NHS England's CP-IS
/// guidance, as quoted in issue 26); the council then registers the
/// newborn's own plan.
pub const DEFAULT_UNBORN_SCOPE_DAYS: u32 = 28;

/// Settings of the Registry service.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// A snapshot ending more than this share of open plans is refused
    /// unless it says `allow_mass_end` (0 to 1).
    #[arg(long, env = "CPIS_MASS_END_SHARE", default_value_t = 0.10)]
    pub mass_end_share: f64,
    /// An unborn child protection plan flags the mother until this many days
    /// after the expected delivery date (the council then registers the
    /// child's own plan).
    #[arg(long, env = "CPIS_UNBORN_SCOPE_DAYS", default_value_t = DEFAULT_UNBORN_SCOPE_DAYS)]
    pub unborn_scope_days: u32,
    /// A `SyncPlans` upload that sends nothing for this many seconds is
    /// dropped (nothing applied), and its council may upload again.
    #[arg(long = "sync-idle-secs", env = "CPIS_SYNC_IDLE_SECS", default_value = "60", value_parser = secs)]
    pub sync_idle: Duration,
    /// Most plan rows one `SyncPlans` upload may carry; more is refused whole.
    #[arg(long, env = "CPIS_SYNC_MAX_ROWS", default_value_t = 1_000_000)]
    pub sync_max_rows: i64,
    /// Rows a `SyncPlans` upload stages per database round trip.
    #[arg(long, env = "CPIS_SYNC_BATCH", default_value_t = crate::sync::BATCH)]
    pub sync_batch: usize,
    /// Pooled connections only `LookupFlags` may use (0: a quarter of the
    /// pool, at least 2).
    #[arg(long, env = "CPIS_LOOKUP_RESERVED_CONNECTIONS", default_value_t = 0)]
    pub lookup_reserved_connections: usize,
    /// Pooled connections one council's work may hold at once (0: half of
    /// what councils may use).
    #[arg(long, env = "CPIS_DB_CONNECTIONS_PER_COUNCIL", default_value_t = 0)]
    pub connections_per_council: usize,
    /// Milliseconds `LookupFlags` waits for a connection: shorter than the
    /// Attendance service's deadline for it (2 s), so a busy pool answers
    /// UNAVAILABLE in time instead of a deadline passing unexplained.
    #[arg(long = "lookup-db-wait-ms", env = "CPIS_LOOKUP_DB_WAIT_MS", default_value = "1000", value_parser = millis)]
    pub lookup_wait: Duration,
    /// Milliseconds council work waits for its place before RESOURCE_EXHAUSTED.
    #[arg(long = "council-db-wait-ms", env = "CPIS_COUNCIL_DB_WAIT_MS", default_value = "5000", value_parser = millis)]
    pub council_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        cpis_runtime::settings::defaults()
    }
}

impl Settings {
    /// Checks the rules between values, naming the variable that breaks one.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.mass_end_share) {
            return Err(invalid("CPIS_MASS_END_SHARE", "must be between 0 and 1"));
        }
        if self.sync_idle.is_zero() {
            return Err(invalid("CPIS_SYNC_IDLE_SECS", "must be more than 0"));
        }
        if self.sync_max_rows < 1 {
            return Err(invalid("CPIS_SYNC_MAX_ROWS", "must be at least 1"));
        }
        if self.sync_batch == 0 || self.sync_batch > 10_000 {
            return Err(invalid("CPIS_SYNC_BATCH", "must be between 1 and 10000"));
        }
        Ok(())
    }
}
