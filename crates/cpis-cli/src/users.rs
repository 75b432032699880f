//! The person at a setting, for client commands: `cpis users token` prints a
//! development token (signed by the key `cpis dev` made under its state
//! directory) and the role id to send with it; [`UserToken`] is how
//! `cpis check-in` and `cpis episodes` send one (`authorization: Bearer` and
//! `nhsd-session-urid` metadata), as a clinical system sends its user's
//! CIS2 token.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use cpis_devkit::users::{DevUsers, TokenSpec};
use std::path::PathBuf;
use std::time::Duration;

/// `cpis users ...`
#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Print a signed development user token and the role id to send as NHSD-Session-URID.
    Token(TokenArgs),
}

/// `cpis users token`
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Development state directory holding `users/` (made by `cpis dev`).
    #[arg(long, env = "CPIS_STATE_DIR", default_value = ".cpis")]
    pub state_dir: PathBuf,
    /// ODS code of the organisation the role is held at: the setting's own code
    /// (or its trust's, the first three characters of a five-character site code).
    #[arg(long)]
    pub setting: String,
    /// The person's name.
    #[arg(long, default_value = "Dev Clinician")]
    pub name: String,
    /// SDS role profile id of the role (what NHSD-Session-URID names); derived when absent.
    #[arg(long)]
    pub role_profile: Option<String>,
    /// National RBAC job role code (R8000 Clinical Practitioner, R8001 Nurse, R8008
    /// Admin/Clinical Support, ...) or a whole S..:G..:R.. role code.
    #[arg(long, default_value = "R8000")]
    pub job_role: String,
    /// National RBAC activity codes of the role, comma-separated: B0107 (View CP-IS
    /// Flag: a notifying read), B0170 (view without notification: a silent read).
    #[arg(long, value_delimiter = ',', required = true)]
    pub activity: Vec<String>,
    /// How long the token is valid: e.g. 15m, 1h, 90s.
    #[arg(long, default_value = "15m", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Print JSON ({"token", "role_id", "user_id", "expires_at"}).
    #[arg(long, conflicts_with = "env")]
    pub json: bool,
    /// Print shell `export` lines (CPIS_USER_TOKEN, CPIS_SESSION_URID) for `eval`.
    #[arg(long)]
    pub env: bool,
}

/// Parses a duration written `15m`, `1h`, `90s` or a number of seconds.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration such as 15m, 1h or 90s"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    if secs == 0 || secs > 24 * 3600 {
        return Err("the token's lifetime must be between 1 second and 24 hours".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Runs `cpis users ...`.
pub fn users(command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Token(args) => token(args),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        cpis_domain::validate::is_setting_code(&args.setting),
        "--setting must be an ODS code (3 to 6 upper-case letters and digits)"
    );
    let spec = TokenSpec {
        setting: args.setting,
        name: args.name,
        role_profile: args.role_profile,
        job_role: args.job_role,
        activities: args.activity.iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect(),
        ttl: args.ttl,
    };
    let users = DevUsers::new(&args.state_dir);
    let token = users.token(&spec).with_context(|| {
        format!("signing a development token (run `cpis dev --state-dir {}` first)", args.state_dir.display())
    })?;
    if args.json {
        let out = serde_json::json!({"token": token.token, "role_id": token.role_id, "user_id": token.user_id,
                                     "expires_at": token.expires_at.to_rfc3339()});
        println!("{out}");
    } else if args.env {
        println!("export CPIS_USER_TOKEN='{}'", token.token);
        println!("export CPIS_SESSION_URID='{}'", token.role_id);
    } else {
        println!("Authorization: Bearer {}", token.token);
        println!("NHSD-Session-URID: {}", token.role_id);
    }
    Ok(())
}

/// The person's token for a client command: as a clinical system sends its
/// user's CIS2 token with every setting-facing call.
#[derive(Args, Debug, Clone)]
pub struct UserToken {
    /// The person's token (from `cpis users token`, or a CIS2 token).
    #[arg(long = "token", env = "CPIS_USER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The role selected for the session (NHSD-Session-URID); the token's
    /// selected_roleid when absent.
    #[arg(long = "session-urid", env = "CPIS_SESSION_URID")]
    pub session_urid: Option<String>,
}

impl UserToken {
    /// A token and role sent as given.
    pub fn new(token: impl Into<String>, session_urid: impl Into<String>) -> Self {
        Self { token: Some(token.into()), session_urid: Some(session_urid.into()) }
    }

    /// Adds the token and role to a request's metadata; an error telling how
    /// to get a token when there is none.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) -> anyhow::Result<()> {
        let Some(token) = self.token.as_deref().filter(|t| !t.is_empty()) else {
            anyhow::bail!(
                "no user token: pass --token (or set CPIS_USER_TOKEN), e.g. \
                 eval \"$(cpis users token --setting RBQ01 --activity B0107 --env)\""
            );
        };
        let bearer = format!("Bearer {token}").parse().context("the token is not valid header text")?;
        request.metadata_mut().insert("authorization", bearer);
        if let Some(urid) = self.session_urid.as_deref().filter(|u| !u.is_empty()) {
            request.metadata_mut().insert("nhsd-session-urid", urid.parse().context("the session URID")?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_written_with_their_unit() {
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("2d").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
