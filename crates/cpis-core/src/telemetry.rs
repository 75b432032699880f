//! Logging: human-readable on a terminal, structured JSON otherwise.
//! Nothing logged by cpis carries an NHS number or contact details.

use std::io::IsTerminal;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber (level from `RUST_LOG`, default `info`).
/// Safe to call more than once: later calls do nothing.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if std::io::stderr().is_terminal() {
        registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().json().with_current_span(true).with_writer(std::io::stderr)).try_init()
    };
    let _ = result;
}
