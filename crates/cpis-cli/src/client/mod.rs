//! Client commands for people and scripts: `cpis plans ...`, `cpis check-in`,
//! `cpis subscribe`, `cpis audit`. Each connects with mutual TLS, by default
//! as a development identity from `--state-dir` (override with `--cert`,
//! `--key`, `--ca`), to `localhost` at `--port-base` (override with `--endpoint`).

mod audit;
mod check_in;
mod plans;
mod records;
mod report;
mod subscribe;

pub use audit::*;
pub use check_in::*;
pub use plans::*;
pub use records::*;
pub use report::*;
pub use subscribe::*;

use anyhow::bail;
use clap::Args;
use cpis_devkit::pki::Pki;
use cpis_domain::identity::{Caller, CallerKind};
use cpis_runtime::tls::TlsPaths;
use std::path::PathBuf;
use tonic::transport::Channel;

/// Where to connect and as whom.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Development state directory holding `pki/`.
    #[arg(long, global = true, env = "CPIS_STATE_DIR", default_value = ".cpis")]
    pub state_dir: PathBuf,
    /// Registry port of `cpis dev`; attendance is +1, notification +2.
    #[arg(long, global = true, default_value_t = 50051)]
    pub port_base: u16,
    /// The service's URL (overrides --port-base), e.g. https://registry.example:50051.
    #[arg(long, global = true)]
    pub endpoint: Option<String>,
    /// Client certificate (PEM); defaults to the dev PKI's certificate of the identity.
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM, PKCS#8).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
}

impl Connection {
    fn tls(&self, default: &Caller) -> anyhow::Result<TlsPaths> {
        let dev = Pki::new(&self.state_dir).paths_for(default);
        let paths = TlsPaths {
            ca: self.ca.clone().unwrap_or(dev.ca),
            cert: self.cert.clone().unwrap_or(dev.cert),
            key: self.key.clone().unwrap_or(dev.key),
        };
        for p in [&paths.ca, &paths.cert, &paths.key] {
            if !p.exists() {
                bail!("{} does not exist: pass --cert/--key/--ca, or issue it with `cpis certs issue`", p.display());
            }
        }
        Ok(paths)
    }

    /// A channel to the service at `offset` from the port base.
    pub fn channel(&self, offset: u16, as_who: &Caller) -> anyhow::Result<Channel> {
        let url = match &self.endpoint {
            Some(url) => url.clone(),
            None => format!("https://localhost:{}", self.port_base + offset),
        };
        cpis_runtime::client::channel(&url, &self.tls(as_who)?, None)
    }
}

fn council(code: &str) -> anyhow::Result<Caller> {
    Ok(Caller::from_parts(CallerKind::Council, code)?)
}

fn setting(code: &str) -> anyhow::Result<Caller> {
    Ok(Caller::from_parts(CallerKind::Setting, code)?)
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut message = format!("{:?}: {}", e.code(), e.message());
    if let Some(bad) = e.get_error_details().bad_request() {
        for v in &bad.field_violations {
            message.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    anyhow::anyhow!(message)
}

/// Largest response `cpis plans` decodes: a sync's answer lists up to 1,000
/// rejections and 3 × 1,000 references, far below this.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
