//! Helpers for settings structs (clap `Args` read from the environment):
//! value parsers for durations in the unit their variable names, the
//! documented defaults with the environment ignored, and the name of the
//! variable behind a value that failed to parse. Depends on nothing else in
//! this crate, so every module's settings may use it.

use clap::{Args, FromArgMatches};
use std::time::Duration;

/// The documented defaults of a settings struct: its command line with no
/// arguments and the environment ignored (tests and development start from
/// these; production parses the real environment).
pub fn defaults<T: Args + FromArgMatches>() -> T {
    defaults_with(&["defaults"])
}

pub(crate) fn defaults_with<T: Args + FromArgMatches>(argv: &[&str]) -> T {
    let mut command = T::augment_args(clap::Command::new("defaults").no_binary_name(false));
    let ids: Vec<_> = command.get_arguments().map(|a| a.get_id().clone()).collect();
    for id in ids {
        command = command.mut_arg(id, |a| a.env(None::<&str>));
    }
    let matches = command.try_get_matches_from(argv).expect("the defaults of a settings struct parse");
    T::from_arg_matches(&matches).expect("the defaults of a settings struct are complete")
}

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} must be a number, 0 or more"));
    }
    Ok(v)
}

/// A duration written in milliseconds.
pub fn millis(s: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs_f64(number(s)? / 1_000.0))
}

/// A duration written in seconds (fractions allowed, e.g. `0.5`).
pub fn secs(s: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs_f64(number(s)?))
}

/// A duration written in minutes.
pub fn minutes(s: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs_f64(number(s)? * 60.0))
}

/// A duration written in hours.
pub fn hours(s: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs_f64(number(s)? * 3_600.0))
}

/// A duration written in days.
pub fn days(s: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs_f64(number(s)? * 86_400.0))
}

/// A settings rule broken by an otherwise valid value: names the variable.
pub fn invalid(variable: &str, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{variable}: {why}")
}

/// For a command line that failed to parse because of a value that came
/// from the environment, the message with the variable's name in front (clap
/// names only the flag). Other errors are left to clap.
pub fn explain(command: &clap::Command, error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let Some(ContextValue::String(flag)) = error.get(ContextKind::InvalidArg) else { return None };
    let long = flag.trim_start_matches('-').split([' ', '=']).next()?.to_string();
    let variable = find_env(command, &long)?;
    std::env::var_os(&variable)?;
    Some(format!("{variable}: {}", error.render().to_string().trim_start_matches("error: ").trim_end()))
}

fn find_env(command: &clap::Command, long: &str) -> Option<String> {
    for arg in command.get_arguments() {
        if arg.get_long() == Some(long) {
            if let Some(env) = arg.get_env() {
                return Some(env.to_string_lossy().into_owned());
            }
        }
    }
    command.get_subcommands().find_map(|sub| find_env(sub, long))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_unit_of_their_variable() {
        assert_eq!(millis("250").unwrap(), Duration::from_millis(250));
        assert_eq!(secs("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(minutes("5").unwrap(), Duration::from_secs(300));
        assert_eq!(hours("72").unwrap(), Duration::from_secs(72 * 3600));
        assert_eq!(days("30").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(millis("-1").is_err());
        assert!(secs("soon").is_err());
        assert!(secs("NaN").is_err());
    }
}
